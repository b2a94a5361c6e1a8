"""The emitter against a stand-in broker: sending, dropping, acks, fork, exit."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import zlog
from zlog import protocol
from zlog.broker.config import BrokerConfig
from zlog.client import emitter as emitter_module
from zlog.client.emitter import Delivery, DropReason, Emitter
from zlog.client.envelope import EnvelopeBuilder
from zlog.protocol import EventClass, encode_event

from .conftest import FakeBroker


def app_event(message: str = "hello") -> tuple:
    return EnvelopeBuilder().application(
        service_name="svc",
        instance_id="i-1",
        level="INFO",
        logger="test",
        message=message,
        code="",
        context={"n": 1},
        tenant_id="t1",
    )


def audit_event() -> tuple:
    return EnvelopeBuilder().audit(
        tenant_id="t1",
        action="login",
        actor="alice",
        resource="app",
        outcome="success",
        context=None,
    )


def emit_in_child(count: int, socket_path: str | None = None) -> int:
    """Pool worker: emit ``count`` events from the child's own emitter.

    A forkserver outlives the test that started it, so its children inherit
    that test's ``ZLOG_SOCKET``; pool tests name the socket explicitly.
    """
    if socket_path is not None:
        zlog.configure(socket_path=socket_path)
    for i in range(count):
        zlog.get_emitter().send(*app_event(f"child {i}"))

    return os.getpid()


def test_event_reaches_broker_with_origin(fake_broker: FakeBroker, emitter: Emitter):
    """An event arrives with the host, pid and a sequence number of its emitter."""
    assert emitter.send(*app_event())
    [event] = fake_broker.wait_for(1)

    assert event.pid == os.getpid()
    assert event.seq >= 1
    assert event.host
    assert event.key == b"svc"
    assert event.event_class is EventClass.APPLICATION
    assert emitter.stats().sent == 1


def test_sequence_numbers_increase_per_emitter(fake_broker, emitter):
    """Each event carries the next sequence number of its emitter."""
    for i in range(5):
        emitter.send(*app_event(str(i)))
    events = fake_broker.wait_for(5)

    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


def frame_bytes(emitter: Emitter, built: tuple) -> int:
    """The size of the one frame ``emitter`` sends for ``built``."""
    event_class, value, key, headers = built
    [frame] = encode_event(
        event_class, value, host=emitter.host, pid=1, seq=1, key=key, headers=headers
    )

    return len(frame)


def test_frame_over_max_frame_bytes_is_dropped_as_too_large(fake_broker, emitter):
    """A frame one byte over the limit is never sent and counts ``too_large``.

    A frame of exactly the limit goes, and the dropped event takes no sequence
    number, so the broker sees the drop report and no gap.
    """
    fits = app_event("fits")
    over = app_event("fits!")
    limit = frame_bytes(emitter, fits)
    zlog.configure(socket_path=emitter.socket_path, max_frame_bytes=limit)
    limited = zlog.get_emitter()

    results = [limited.send(*fits), limited.send(*over), limited.send(*fits)]
    assert limited.flush(5)
    events = fake_broker.events

    assert results == [True, False, True]
    assert len(events) == 2 and events[1].seq == events[0].seq + 1
    assert limited.stats().dropped == {DropReason.TOO_LARGE: 1}
    assert [report.counts for report in fake_broker.drops] == [{"too_large": 1}]


def test_acked_frame_over_max_frame_bytes_is_too_large_at_once(socket_path):
    """An audit event whose frame is over the limit is refused without a wait."""
    built = audit_event()
    broker = FakeBroker(socket_path, reply="silent")
    limit = frame_bytes(Emitter(socket_path), built) - 1
    emitter = Emitter(socket_path, ack_timeout_s=5.0, max_frame_bytes=limit)
    try:
        delivery, elapsed_s = timed(emitter.send_and_wait, *built)
        sent = emitter.send(*built, wants_ack=True)
    finally:
        emitter.close(0)
        broker.stop()

    assert delivery is Delivery.TOO_LARGE and sent is False
    assert elapsed_s < 1.0
    assert broker.events == []
    assert emitter.stats().dropped == {DropReason.TOO_LARGE: 2}


def test_default_frame_limit_is_the_brokers(socket_path):
    """Emitter and broker refuse frames over the same size by default."""
    broker_limit = BrokerConfig(socket_path=socket_path).max_frame_bytes

    assert Emitter(socket_path).max_frame_bytes == broker_limit


def test_no_broker_drops_and_counts_without_blocking(socket_path: Path):
    """With no socket file an application event is dropped at once and counted.

    The first-connect grace applies only while the broker's socket file exists.
    """
    emitter = Emitter(socket_path)
    try:
        started = time.monotonic()
        results = [emitter.send(*app_event()) for _ in range(100)]
        elapsed = time.monotonic() - started
    finally:
        emitter.close(0)

    assert results == [False] * 100
    assert elapsed < 0.5
    assert emitter.stats().dropped == {DropReason.BROKER_UNAVAILABLE: 100}


def test_drops_are_reported_on_next_successful_send_and_leave_no_gap(
    socket_path: Path,
):
    """Drops counted while the broker was away reach it with the next event,
    and took no sequence number: the broker sees 1, 2, 3, ... without a gap."""
    emitter = Emitter(socket_path, connect_grace_ms=0)
    try:
        dropped = [emitter.send(*app_event()) for _ in range(5)]
        broker = FakeBroker(socket_path)
        try:
            deadline = time.monotonic() + 5
            while not emitter.send(*app_event()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert emitter.send(*app_event())
            assert emitter.flush(5)
            seqs = [event.seq for event in broker.wait_for(2)]
            reported = sum(r.counts.get("broker_unavailable", 0) for r in broker.drops)
        finally:
            broker.stop()
        stats = emitter.stats()
    finally:
        emitter.close(0)

    assert dropped == [False] * 5
    assert reported == stats.dropped["broker_unavailable"] >= 5
    assert stats.reported == stats.dropped
    assert seqs == list(range(1, stats.sent + 1))


def test_threads_filling_a_stalled_broker_number_only_what_zeromq_took(
    socket_path: Path,
):
    """Four threads sending into a broker that does not read: every number the
    broker receives is one of 1..sent, each once, so no drop leaves a gap."""
    threads, per_thread = 4, 3000
    broker = FakeBroker(socket_path, rcvhwm=100)
    broker.paused.set()
    emitter = Emitter(socket_path, queue_events=50)
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for i in range(per_thread):
            emitter.send(*app_event(str(i)))

    try:
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        broker.paused.clear()
        stats = emitter.stats()
        events = broker.wait_for(stats.sent)
    finally:
        emitter.close(0)
        broker.stop()

    assert stats.dropped["broker_unavailable"] > 0, "the queues never filled up"
    assert stats.sent + stats.dropped["broker_unavailable"] == threads * per_thread
    assert sorted(e.seq for e in events) == list(range(1, stats.sent + 1))


def test_count_drop_keeps_reasons_a_drop_report_can_carry(socket_path: Path):
    """A reason that is not a short label, or one too many, counts as other."""
    emitter = Emitter(socket_path)
    emitter.count_drop("Not A Label")
    for i in range(20):
        emitter.count_drop(f"reason_{i}")
    emitter.count_drop("reason_0")

    dropped = emitter.stats().dropped
    emitter.close(0)

    assert len(dropped) == protocol.MAX_DROP_REASONS
    assert dropped["reason_0"] == 2
    assert dropped[DropReason.OTHER] == 1 + 20 - (protocol.MAX_DROP_REASONS - 1)
    assert all(protocol.is_drop_reason(reason) for reason in dropped)


def test_acked_send_returns_true_on_ack(fake_broker, emitter):
    """An audit event sent with a wait returns True once the broker acks it."""
    assert emitter.send(*audit_event(), wants_ack=True)
    assert fake_broker.events[0].wants_ack
    assert emitter.stats().acked == 1


def test_nack_is_false_and_counted(socket_path, emitter):
    """A refused event returns False and counts as nacked."""
    broker = FakeBroker(socket_path, reply="nack")
    try:
        delivery = emitter.send_and_wait(*audit_event())
    finally:
        broker.stop()

    assert delivery is Delivery.NACKED
    assert emitter.stats().nacked == 1


def test_missing_ack_times_out_within_bound(socket_path, emitter):
    """Without an answer the wait ends at the timeout and counts as unacked."""
    broker = FakeBroker(socket_path, reply="silent")
    try:
        started = time.monotonic()
        delivery = emitter.send_and_wait(*audit_event(), timeout_s=0.3)
        elapsed = time.monotonic() - started
    finally:
        broker.stop()

    assert delivery is Delivery.TIMED_OUT
    assert 0.25 < elapsed < 1.5
    assert emitter.stats().unacked == 1


def test_acked_send_without_broker_is_bounded(socket_path):
    """An audit event with no broker gives up after its timeout."""
    emitter = Emitter(socket_path)
    try:
        started = time.monotonic()
        delivery = emitter.send_and_wait(*audit_event(), timeout_s=0.3)
        elapsed = time.monotonic() - started
    finally:
        emitter.close(0)

    assert delivery is Delivery.UNAVAILABLE
    assert elapsed < 1.0


def test_acked_send_without_socket_file_fails_at_once(socket_path):
    """With no socket file an acked send is UNAVAILABLE at once, and counted."""
    emitter = Emitter(socket_path, ack_timeout_s=3.0)
    try:
        started = time.monotonic()
        deliveries = [emitter.send_and_wait(*audit_event()) for _ in range(20)]
        sent = emitter.send(*audit_event(), wants_ack=True)
        elapsed = time.monotonic() - started
    finally:
        emitter.close(0)

    assert deliveries == [Delivery.UNAVAILABLE] * 20
    assert sent is False
    assert elapsed < 1.0
    assert emitter.stats().dropped == {DropReason.BROKER_UNAVAILABLE: 21}


def test_acked_send_to_stale_socket_file_fails_after_the_grace(socket_path):
    """A socket file nobody listens on fails an acked send after the grace."""
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()
    emitter = Emitter(socket_path, ack_timeout_s=4.0, connect_grace_ms=300)
    try:
        started = time.monotonic()
        delivery = emitter.send_and_wait(*audit_event())
        elapsed = time.monotonic() - started
    finally:
        emitter.close(0)

    assert delivery is Delivery.UNAVAILABLE
    assert 0.25 < elapsed < 2.5
    assert emitter.stats().dropped == {DropReason.BROKER_UNAVAILABLE: 1}


def test_silent_broker_costs_one_full_timeout_then_the_grace(socket_path):
    """After a wait with no reply, acked sends wait only the grace until one comes."""
    broker = FakeBroker(socket_path, reply="silent")
    emitter = Emitter(socket_path, ack_timeout_s=1.5, connect_grace_ms=200)
    try:
        first = timed(emitter.send_and_wait, *audit_event())
        later = [timed(emitter.send_and_wait, *audit_event()) for _ in range(3)]
        broker.reply = "ack"
        recovered = [emitter.send_and_wait(*audit_event()) for _ in range(30)]
        broker.reply = "silent"
        after_recovery = timed(emitter.send_and_wait, *audit_event())
    finally:
        emitter.close(0)
        broker.stop()

    assert first[0] is Delivery.TIMED_OUT and first[1] >= 1.4
    assert all(d is Delivery.TIMED_OUT and s < 1.0 for d, s in later)
    assert Delivery.ACKED in recovered
    assert after_recovery[0] is Delivery.TIMED_OUT and after_recovery[1] >= 1.4


def timed(call, *args) -> tuple:
    """The result of ``call(*args)`` and the seconds it took."""
    started = time.monotonic()
    result = call(*args)

    return result, time.monotonic() - started


def test_many_threads_send_concurrently(fake_broker, emitter):
    """Sixteen threads sending at once lose nothing and get unique sequences."""
    threads, per_thread = 16, 200
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for i in range(per_thread):
            emitter.send(*app_event(str(i)))
        emitter.send(*audit_event(), wants_ack=True)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    events = fake_broker.wait_for(threads * (per_thread + 1))

    assert len(events) == threads * (per_thread + 1)
    assert len({e.seq for e in events}) == len(events)
    stats = emitter.stats()
    assert stats.sent == len(events)
    assert stats.acked == threads
    assert stats.dropped == {}


def test_dead_threads_sockets_are_retired_with_their_counts(fake_broker, emitter):
    """A finished thread's socket is closed later; its counts stay in the stats."""
    for _ in range(3):
        thread = threading.Thread(target=lambda: emitter.send(*app_event()))
        thread.start()
        thread.join()
    emitter.send(*app_event())

    assert len(emitter._channels) <= 2
    assert emitter.stats().sent == 4


def test_fork_after_first_emit_child_uses_its_own_emitter(fake_broker, emitter):
    """A child forked after the parent logged sends with its own pid; both work."""
    assert emitter.send(*app_event("parent before"))
    context = multiprocessing.get_context("fork")
    child = context.Process(target=emit_in_child, args=(3,))
    child.start()
    child.join(20)
    assert emitter.send(*app_event("parent after"))
    events = fake_broker.wait_for(5)

    assert child.exitcode == 0
    pids = [e.pid for e in events]
    assert pids.count(child.pid) == 3
    assert pids.count(os.getpid()) == 2
    assert zlog.get_emitter() is emitter


def test_raw_fork_child_never_touches_parent_sockets(fake_broker, emitter):
    """After os.fork the inherited emitter refuses to send; a new one is used."""
    assert emitter.send(*app_event())
    pid = os.fork()
    if pid == 0:
        ok = not emitter.send(*app_event()) and zlog.get_emitter() is not emitter
        ok = ok and zlog.get_emitter().send(*app_event("child"))
        zlog.close()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    events = fake_broker.wait_for(2)

    assert os.waitstatus_to_exitcode(status) == 0
    assert [e.pid for e in events] == [os.getpid(), pid]


def test_raw_fork_child_that_closes_before_os_exit_delivers_everything(
    fake_broker, emitter
):
    """zlog.close() before os._exit hands every queued event to the broker."""
    pid = os.fork()
    if pid == 0:
        sent = sum(zlog.get_emitter().send(*app_event(str(i))) for i in range(2000))
        zlog.close()
        os._exit(0 if sent == 2000 else 1)
    _, status = os.waitpid(pid, 0)
    events = fake_broker.wait_for(2000, timeout_s=20)

    assert os.waitstatus_to_exitcode(status) == 0
    assert sum(e.pid == pid for e in events) == 2000


def test_close_with_stalled_broker_returns_within_the_linger(socket_path):
    """close() gives up on events a stalled broker never reads after the linger."""
    import zmq

    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvhwm = 1
    router.bind(f"ipc://{socket_path}")
    emitter = Emitter(socket_path, linger_ms=300)
    try:
        for i in range(2000):
            emitter.send(*app_event(str(i)))
        started = time.monotonic()
        emitter.close()
        elapsed = time.monotonic() - started
    finally:
        router.close()
        context.term()

    # The linger, plus the slack close() allows its closer thread.
    assert elapsed < 0.3 + 0.5 + 0.2


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("fork", id="fork"),
        pytest.param("spawn", id="spawn"),
        pytest.param("forkserver", id="forkserver"),
    ],
)
def test_process_pool_workers_deliver_their_events(fake_broker, emitter, method):
    """ProcessPoolExecutor workers deliver every event under each start method."""
    emitter.send(*app_event("parent"))
    context = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        sockets = [str(fake_broker.socket_path)] * 4
        pids = set(pool.map(emit_in_child, [5] * 4, sockets))
    events = fake_broker.wait_for(21, timeout_s=20)

    assert len(events) == 21
    assert {e.pid for e in events} == pids | {os.getpid()}


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pool_delivers(fake_broker, emitter, method):
    """multiprocessing.Pool workers flush what they emitted when they exit."""
    emitter.send(*app_event("parent"))
    context = multiprocessing.get_context(method)
    with context.Pool(2) as pool:
        sockets = [str(fake_broker.socket_path)] * 4
        pids = set(pool.starmap(emit_in_child, zip([3] * 4, sockets, strict=True)))
        pool.close()
        pool.join()
    events = fake_broker.wait_for(13, timeout_s=20)

    assert len(events) == 13
    assert {e.pid for e in events} >= pids


def emit_and_flush_in_child(count: int, socket_path: str) -> bool:
    """Pool task: emit ``count`` events, then wait until the broker has them."""
    emit_in_child(count, socket_path)

    return zlog.flush(timeout_s=20)


def test_pool_terminated_after_tasks_that_flush_loses_nothing(socket_path):
    """Leaving ``with Pool()`` terminates the workers; a flushed task lost nothing.

    The broker reads nothing while the tasks run, so without the flush their
    events would still sit in the workers' ZeroMQ queues when SIGTERM came.
    """
    broker = FakeBroker(socket_path, reading=False)
    threading.Timer(0.5, broker.reading.set).start()
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            flushed = pool.starmap(
                emit_and_flush_in_child, [(2000, str(socket_path))] * 2
            )
        events = broker.wait_for(4000, timeout_s=20)
    finally:
        broker.reading.set()
        broker.stop()

    assert flushed == [True, True]
    assert len(events) == 4000


def test_flush_without_events_is_true_at_once(socket_path, monkeypatch):
    """A process that has sent nothing has nothing to wait for."""
    monkeypatch.setattr(emitter_module, "_emitter", None)

    assert zlog.flush(timeout_s=0)


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, zlog
    from zlog.client.envelope import EnvelopeBuilder
    zlog.configure(socket_path=sys.argv[1], ack_timeout_s=0.2)
    builder = EnvelopeBuilder()
    for i in range(1000):
        zlog.get_emitter().send(*builder.application(
            service_name="s", instance_id="i", level="INFO", logger="l",
            message=str(i), code="", context=None, tenant_id="t"))
    zlog.get_emitter().send(*builder.audit(
        tenant_id="t", action="a", actor="b", resource="c", outcome="success",
        context=None), wants_ack=True)
    import time
    print(time.monotonic(), flush=True)
    """
)


def run_exit_script(socket_path: Path) -> float:
    """Seconds from the script's last line to its exit.

    Interpreter start and imports are left out: on a loaded machine they alone
    can take seconds. CLOCK_MONOTONIC is one clock for the whole machine on
    Linux, so the child's reading and ours compare.
    """
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(socket_path)],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    )
    exited = time.monotonic()

    return exited - float(done.stdout.split()[-1])


def test_exit_without_broker_is_quick(socket_path):
    """A process that logged with no broker running exits within 2 s."""
    assert run_exit_script(socket_path) < 2.0


def test_exit_with_stalled_broker_is_bounded_by_linger(socket_path):
    """A broker that accepts but never reads delays exit by the linger at most."""
    import zmq

    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvhwm = 1
    router.bind(f"ipc://{socket_path}")
    try:
        elapsed = run_exit_script(socket_path)
    finally:
        router.close()
        context.term()

    # The linger (1 s) bounds the wait for the broker; the rest is the closer
    # thread's join slack and interpreter teardown.
    assert elapsed < 3.0


def test_exit_delivers_what_was_queued(fake_broker, socket_path):
    """Events still queued at exit are delivered within the linger."""
    run_exit_script(socket_path)
    events = fake_broker.wait_for(1001)

    assert len(events) == 1001


def test_send_after_close_is_dropped_as_closed(fake_broker, socket_path):
    """Once closed, an emitter drops events and counts them as closed."""
    emitter = Emitter(socket_path)
    emitter.close(0)

    assert not emitter.send(*app_event())
    assert emitter.stats().dropped == {DropReason.CLOSED: 1}


def test_configure_replaces_the_process_emitter(socket_path, monkeypatch):
    """configure() closes the current emitter; the next use makes a new one."""
    emitter_module.configure(socket_path=str(socket_path))
    first = zlog.get_emitter()
    emitter_module.configure(socket_path=str(socket_path))
    second = zlog.get_emitter()
    zlog.close(0)
    emitter_module.configure()

    assert first is not second
    assert first.closed
