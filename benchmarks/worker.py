"""One worker process of the benchmark: logs its items through one path.

Run by ``benchmarks/run.py``, never by hand::

    python worker.py '{"path": "c", "workload": "app", ...}'

The worker builds its items, opens what its path needs (a Kafka producer,
zlog's emitter, the rsyslog socket), prints ``ready`` and waits for a line on
stdin, so every worker starts at once and setup is not timed. Then it logs
each item, timing the call the application would make, and waits until
nothing of its own is still queued on its side. Its last stdout line is a JSON
summary; the per-call times go to ``samples_path`` as raw nanoseconds.

The paths, as an application would write them:

- a: a producer per call: create, start, ``send_and_wait``, stop;
- b: one producer per process, ``send_and_wait`` per event, ``linger_ms=20``;
- c: one producer per process, ``send()`` without waiting, ``flush()`` at end;
- d: zlog: structlog with ``ZlogProcessor`` (the real client path);
- e: a syslog datagram to a private rsyslog socket, as ``SysLogHandler`` sends.

The Kafka producers of a, b and c use ``acks="all"``, as zlog and rsyslog do.
"""

from __future__ import annotations

import array
import asyncio
import json
import resource
import socket
import sys
import time

import workload

# The old publisher's producer lingered 20 ms before each send.
OLD_LINGER_MS = 20

# How long a worker may take to hand over what it still holds at the end.
FLUSH_TIMEOUT_S = 300.0

# CPU seconds this process had used when the harness said go.
_cpu_at_go_s = 0.0


class Pacer:
    """Spaces calls at ``rate_per_s`` on an absolute schedule (0: no pacing)."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval_s = 1 / rate_per_s if rate_per_s else 0.0
        self.next_at = time.perf_counter()

    def wait(self) -> None:
        if not self.interval_s:
            return
        delay_s = self.next_at - time.perf_counter()
        if delay_s > 0:
            time.sleep(delay_s)
        self.next_at += self.interval_s

    async def wait_async(self) -> None:
        if not self.interval_s:
            return
        delay_s = self.next_at - time.perf_counter()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        self.next_at += self.interval_s


def topic_of(spec: dict, fields: dict) -> str:
    return f"{spec['topic_prefix']}.{workload.event_class(fields)}"


def key_of(fields: dict) -> bytes:
    # The old publisher keyed application events by service, others by tenant.
    return b"bench" if workload.event_class(fields) == "application" else b"default"


def producer(spec: dict, **settings):
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=spec["bootstrap_servers"], acks="all", **settings
    )


async def run_producer_per_call(spec: dict, items: list, samples: array.array):
    pacer = Pacer(spec["rate_per_s"])
    clock = time.perf_counter_ns
    for method, message, fields in items:
        await pacer.wait_async()
        started = clock()
        value = workload.old_envelope(method, message, fields, time.time_ns())
        kafka = producer(spec)
        await kafka.start()
        try:
            await kafka.send_and_wait(topic_of(spec, fields), value, key=key_of(fields))
        finally:
            await kafka.stop()
        samples.append(clock() - started)


async def run_send_and_wait(spec: dict, items: list, samples: array.array):
    kafka = producer(spec, linger_ms=OLD_LINGER_MS)
    await kafka.start()
    await ready_then_go()
    pacer = Pacer(spec["rate_per_s"])
    clock = time.perf_counter_ns
    try:
        for method, message, fields in items:
            await pacer.wait_async()
            started = clock()
            value = workload.old_envelope(method, message, fields, time.time_ns())
            await kafka.send_and_wait(topic_of(spec, fields), value, key=key_of(fields))
            samples.append(clock() - started)
    finally:
        await kafka.stop()


async def run_send_and_flush(spec: dict, items: list, samples: array.array):
    kafka = producer(spec)
    await kafka.start()
    await ready_then_go()
    pacer = Pacer(spec["rate_per_s"])
    clock = time.perf_counter_ns
    try:
        for method, message, fields in items:
            await pacer.wait_async()
            started = clock()
            value = workload.old_envelope(method, message, fields, time.time_ns())
            await kafka.send(topic_of(spec, fields), value, key=key_of(fields))
            samples.append(clock() - started)
        await kafka.flush()
    finally:
        await kafka.stop()


def run_zlog(spec: dict, items: list, samples: array.array) -> dict:
    import structlog

    import zlog

    # The emitter's queue holds every event of this run, so a broker slower
    # than the workers shows as time, not as drops (drops are still counted).
    queue_events = max(len(items) + 1000, 10_000)
    zlog.configure(socket_path=spec["socket_path"], queue_events=queue_events)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            zlog.ZlogProcessor(
                service_name="bench",
                tenant_id="default",
                ack=spec.get("zlog_ack", True),
                drop=True,
            ),
        ],
        cache_logger_on_first_use=True,
    )
    log = structlog.get_logger()
    zlog.get_emitter().flush(timeout_s=10)
    ready_then_go_sync()
    pacer = Pacer(spec["rate_per_s"])
    clock = time.perf_counter_ns
    for method, message, fields in items:
        pacer.wait()
        started = clock()
        getattr(log, method)(message, **fields, sent_ns=time.time_ns())
        samples.append(clock() - started)
    zlog.get_emitter().flush(timeout_s=FLUSH_TIMEOUT_S)
    stats = zlog.stats()

    return {"dropped": stats.dropped}


def run_rsyslog(spec: dict, items: list, samples: array.array) -> dict:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(spec["socket_path"])
    ready_then_go_sync()
    pacer = Pacer(spec["rate_per_s"])
    clock = time.perf_counter_ns
    for method, message, fields in items:
        pacer.wait()
        started = clock()
        value = workload.old_envelope(method, message, fields, time.time_ns())
        tag = workload.event_class(fields).encode()
        sock.send(b"<14>" + tag + b": " + value)
        samples.append(clock() - started)
    sock.close()

    return {}


def ready_then_go_sync() -> None:
    global _cpu_at_go_s
    print("ready", flush=True)
    sys.stdin.readline()
    _cpu_at_go_s = cpu_s()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)

    return usage.ru_utime + usage.ru_stime


async def ready_then_go() -> None:
    await asyncio.to_thread(ready_then_go_sync)


def run(spec: dict, samples: array.array) -> dict:
    items = workload.items_for(
        spec["workload"], spec["worker"], spec["workers"], spec["events"]
    )
    path = spec["path"]
    if path == "a":
        ready_then_go_sync()
        asyncio.run(run_producer_per_call(spec, items, samples))
        return {}
    if path == "b":
        asyncio.run(run_send_and_wait(spec, items, samples))
        return {}
    if path == "c":
        asyncio.run(run_send_and_flush(spec, items, samples))
        return {}
    if path == "d":
        return run_zlog(spec, items, samples)

    return run_rsyslog(spec, items, samples)


def main() -> int:
    spec = json.loads(sys.argv[1])
    samples = array.array("q")
    summary = run(spec, samples)
    with open(spec["samples_path"], "wb") as out:
        samples.tofile(out)
    summary.update(
        sent=len(samples),
        cpu_s=cpu_s() - _cpu_at_go_s,
        max_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    )
    print(json.dumps(summary), flush=True)

    return 0


if __name__ == "__main__":
    sys.exit(main())
