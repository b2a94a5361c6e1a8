"""A stand-in emitter: a raw ZeroMQ DEALER sending numbered events to a broker.

Run as a script by the integration tests (one process per simulated worker)::

    python sender.py SOCKET PROC COUNT [--ack-last] [--forever]
    python sender.py SOCKET PROC 0 --paced RATE SECONDS --report FILE

Every event is derived from (PROC, i) by ``make_event``, so a test can rebuild
what each record in Kafka must look like from the id inside it. A paced
sender asks an ack for every event, sends RATE events a second for SECONDS,
waits for the last replies, and writes the numbers acked and nacked to FILE
(``{proc}`` in it is replaced by PROC, so several senders share one flag).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import zmq

from zlog import protocol
from zlog.protocol import EventClass

CLASSES = (EventClass.APPLICATION, EventClass.AUDIT, EventClass.SECURITY)

# A realistic envelope is a few hundred bytes; pad to about that size.
PAD = b"x" * 300


def make_event(proc: int, i: int) -> tuple[EventClass, bytes, list, bytes]:
    """(class, key, headers, envelope) of event ``i`` of sender ``proc``."""
    event_class = CLASSES[i % 3]
    key = b"tenant-%d" % (i % 7)
    headers = [("x-tenant", key), ("x-id", b"%d-%d" % (proc, i))]
    value = b'{"id":"%d-%d","class":%d,"pad":"%s"}' % (proc, i, event_class, PAD)

    return event_class, key, headers, value


def send(socket_path: str, proc: int, count: int, ack_last: bool, forever: bool) -> int:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.sndhwm = 0  # never drop: the tests count every event
    dealer.connect(f"ipc://{socket_path}")
    host = os.uname().nodename.encode()
    pid = os.getpid()
    i = 0
    while forever or i < count:
        event_class, key, headers, value = make_event(proc, i)
        wants_ack = ack_last and i == count - 1
        dealer.send_multipart(
            protocol.encode_event(
                event_class,
                value,
                host=host,
                pid=pid,
                seq=i + 1,
                key=key,
                headers=protocol.encode_headers(headers),
                wants_ack=wants_ack,
            )
        )
        i += 1
    if ack_last:
        reply = protocol.decode_reply(dealer.recv_multipart())
        if isinstance(reply, protocol.FrameError) or reply.kind != protocol.Kind.ACK:
            print(f"expected an ack, got {reply}", file=sys.stderr)
            return 1
    dealer.close(linger=-1)
    context.term()

    return 0


# A paced sender sends in steps of this long, reading replies in between.
PACE_STEP_S = 0.05

# After the last send, replies still missing are waited for this long.
REPLY_WAIT_S = 60.0


def send_paced(socket_path: str, proc: int, rate: int, seconds: float) -> dict:
    """Send ``rate`` acked events a second for ``seconds``; return the replies."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.sndhwm = dealer.rcvhwm = 0
    dealer.connect(f"ipc://{socket_path}")
    host = os.uname().nodename.encode()
    acked: list[int] = []
    nacked: dict[int, str] = {}
    sent = 0
    started = time.monotonic()
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate)
        for i in range(sent, due):
            event_class, key, headers, value = make_event(proc, i)
            frames = protocol.encode_event(
                event_class,
                value,
                host=host,
                pid=os.getpid(),
                seq=i + 1,
                key=key,
                headers=protocol.encode_headers(headers),
                wants_ack=True,
            )
            dealer.send_multipart(frames)
        sent = max(sent, due)
        _read_replies(dealer, acked, nacked, PACE_STEP_S)
    deadline = time.monotonic() + REPLY_WAIT_S
    while len(acked) + len(nacked) < sent and time.monotonic() < deadline:
        _read_replies(dealer, acked, nacked, 0.1)
    dealer.close(linger=0)
    context.term()

    return {"sent": sent, "acked": acked, "nacked": nacked}


def _read_replies(dealer, acked: list, nacked: dict, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while dealer.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        reply = protocol.decode_reply(dealer.recv_multipart())
        if reply.kind == protocol.Kind.ACK:
            acked.append(reply.seq - 1)
        else:
            nacked[reply.seq - 1] = reply.body.decode()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("proc", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--ack-last", action="store_true")
    parser.add_argument("--forever", action="store_true")
    parser.add_argument("--paced", nargs=2, type=float, metavar=("RATE", "SECONDS"))
    parser.add_argument("--report")
    args = parser.parse_args()
    if args.paced:
        rate, seconds = args.paced
        result = send_paced(args.socket, args.proc, int(rate), seconds)
        with open(args.report.format(proc=args.proc), "w") as report:
            json.dump(result, report)
        sys.exit(0)
    sys.exit(send(args.socket, args.proc, args.count, args.ack_last, args.forever))
