"""Fixtures for the client tests: a stand-in broker and a fresh emitter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from zlog import protocol
from zlog.client import emitter as emitter_module


class FakeBroker:
    """A ZeroMQ ROUTER in a thread that records what emitters send.

    ``reply`` decides the answer to events that want one: ``"ack"``,
    ``"nack"`` or ``"silent"``. While ``paused`` is set it reads nothing, so
    what emitters send piles up in ZeroMQ's queues (``rcvhwm`` messages on
    its side) until their sends are refused. With ``reading=False`` it binds
    but reads nothing until ``reading.set()``, as a broker busy elsewhere.
    """

    def __init__(
        self,
        socket_path: Path,
        reply: str = "ack",
        rcvhwm: int = 1000,
        *,
        reading: bool = True,
    ) -> None:
        self.socket_path = socket_path
        self.reply = reply
        self.rcvhwm = rcvhwm
        self.paused = threading.Event()
        self.reading = threading.Event()
        if reading:
            self.reading.set()
        self.events: list[protocol.Event] = []
        self.drops: list[protocol.DropReport] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        context = zmq.Context()
        sock = context.socket(zmq.ROUTER)
        sock.linger = 0
        sock.rcvhwm = self.rcvhwm
        sock.bind(f"ipc://{self.socket_path}")
        self._ready.set()
        try:
            while not self._stop.is_set():
                if self.paused.is_set():
                    self._stop.wait(0.01)
                elif not self.reading.wait(0.02):
                    continue
                elif sock.poll(20):
                    self._handle(sock, sock.recv_multipart())
        finally:
            sock.close()
            context.term()

    def _handle(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        identity, message = frames[0], frames[1:]
        decoded = protocol.decode(message)
        if isinstance(decoded, protocol.DropReport):
            self.drops.append(decoded)
        elif isinstance(decoded, protocol.StatusRequest):
            sock.send_multipart([identity, *protocol.encode_status_reply(b"{}")])
        elif isinstance(decoded, protocol.Event):
            self.events.append(decoded)
            if decoded.wants_ack and self.reply == "ack":
                sock.send_multipart([identity, *protocol.encode_ack(decoded.seq)])
            elif decoded.wants_ack and self.reply == "nack":
                nack = protocol.encode_nack(decoded.seq, "refused")
                sock.send_multipart([identity, *nack])
        else:
            raise AssertionError(f"broker could not decode a message: {decoded}")

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[protocol.Event]:
        """Wait until ``count`` events arrived; return them all."""
        deadline = threading.Event()
        for _ in range(int(timeout_s * 50)):
            if len(self.events) >= count:
                break
            deadline.wait(0.02)

        return list(self.events)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def fake_broker(socket_path: Path) -> Iterator[FakeBroker]:
    """A stand-in broker on this test's socket path, acknowledging everything."""
    broker = FakeBroker(socket_path)
    yield broker
    broker.stop()


@pytest.fixture
def emitter(socket_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The process emitter, pointed at this test's socket, closed afterwards."""
    monkeypatch.setenv("ZLOG_SOCKET", str(socket_path))
    monkeypatch.setenv("TENANT_ID", "tenant-test")
    emitter_module.configure(socket_path=str(socket_path), ack_timeout_s=2.0)
    yield emitter_module.get_emitter()
    emitter_module.close(linger_ms=0)
    emitter_module.configure()
