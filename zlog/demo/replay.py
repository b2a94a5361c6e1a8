"""Replay the sample files from a pool of worker processes, as an application.

The parent splits every file into chunks of lines, once per repeat, and hands
the chunks to a ``multiprocessing`` pool. Each worker configures structlog
once, with ``zlog.ZlogProcessor`` in its chain, then for every line of a
chunk parses it and logs it with the method of its level: the processor
builds the envelope and hands it to the broker over the socket. Nothing here
talks to Kafka.

Each event carries ``repeat`` (which pass over the files it belongs to) and
``sent_at`` (the wall-clock time just before the log call), so the verifier
can match it exactly once and time its way to Kafka.

``rate_per_s`` caps the whole pool: each worker paces itself at its share.
Workers ignore SIGINT; the parent receives Ctrl-C and terminates the pool.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zlog.demo.parsers import SOURCES, parse_line

__all__ = [
    "DEFAULT_CHUNK_LINES",
    "Chunk",
    "ReplayResult",
    "ReplaySettings",
    "chunks",
    "expected_events",
    "replay",
]

# Small enough that four workers share every 2,000-line file and the
# progress bar moves smoothly, large enough that task overhead stays small.
DEFAULT_CHUNK_LINES = 250


@dataclass(frozen=True)
class ReplaySettings:
    """What every worker needs to log the way the demo asks."""

    data_dir: Path
    socket_path: Path
    service_name: str
    tenant_id: str
    rate_per_s: float = 0.0
    workers: int = 4


@dataclass(frozen=True)
class Chunk:
    """Lines ``start`` to ``stop`` (0-based, stop excluded) of one file."""

    source_file: str
    start: int
    stop: int
    repeat: int


def read_sources(data_dir: Path) -> dict[str, list[str]]:
    """Every sample file's lines, by file name, in ``SOURCES`` order."""
    return {
        name: (data_dir / name).read_text(encoding="utf-8").splitlines()
        for name in SOURCES
    }


def chunks(
    line_counts: dict[str, int], repeat: int, chunk_lines: int = DEFAULT_CHUNK_LINES
) -> list[Chunk]:
    """The pool's tasks: every file in chunks, once per repeat."""
    return [
        Chunk(name, start, min(start + chunk_lines, count), index)
        for index in range(repeat)
        for name, count in line_counts.items()
        for start in range(0, count, chunk_lines)
    ]


def expected_events(
    sources: dict[str, list[str]], repeat: int
) -> dict[tuple[str, int, int], str]:
    """Each (file, line number, repeat) the replay will log, with its class."""
    classes = {
        (name, line_no): parse_line(name, line_no, text).event_class
        for name, lines in sources.items()
        for line_no, text in enumerate(lines, 1)
    }

    return {
        (name, line_no, index): event_class
        for index in range(repeat)
        for (name, line_no), event_class in classes.items()
    }


@dataclass
class ReplayResult:
    """Lines logged per file, and what the workers' emitters dropped."""

    logged: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    unflushed_chunks: int = 0
    # event class -> (log calls, seconds spent in them)
    call_time_s: dict[str, list[float]] = field(default_factory=dict)


def replay(
    settings: ReplaySettings,
    tasks: list[Chunk],
    on_progress: Callable[[int], None] = lambda n: None,
    start_method: str | None = None,
) -> ReplayResult:
    """Log every line of ``tasks`` from a pool of worker processes.

    ``on_progress`` is called in the parent with the number of lines of each
    finished chunk.
    """
    context = multiprocessing.get_context(start_method)
    result = ReplayResult()
    drops_by_pid: dict[int, dict[str, int]] = {}
    with context.Pool(
        settings.workers, initializer=_init_worker, initargs=(settings,)
    ) as pool:
        for done in pool.imap_unordered(_replay_chunk, tasks):
            result.logged[done.source_file] += done.lines
            result.unflushed_chunks += not done.flushed
            drops_by_pid[done.pid] = done.dropped
            for event_class, (calls, seconds) in done.call_time_s.items():
                total = result.call_time_s.setdefault(event_class, [0, 0.0])
                total[0] += calls
                total[1] += seconds
            on_progress(done.lines)
        pool.close()
        pool.join()
    for dropped in drops_by_pid.values():
        result.dropped.update(dropped)

    return result


# -- inside a worker process -----------------------------------------------------

# A chunk of 250 lines reaches a running broker in milliseconds; the bound
# only matters when the broker is gone.
FLUSH_TIMEOUT_S = 10.0


# Eight workers starting at once on two busy cores took longer than the
# emitter's default grace (100 ms) to connect, and a worker's first line was
# dropped; the demo wants every line, so it allows the pool time to connect.
CONNECT_GRACE_MS = 2000


@dataclass(frozen=True)
class _ChunkDone:
    """What a worker reports for each chunk."""

    source_file: str
    lines: int
    pid: int
    flushed: bool
    dropped: dict[str, int]
    call_time_s: dict[str, tuple[int, float]]


_worker: _Worker | None = None


class _Pacer:
    """Sleeps so that calls to ``wait`` happen at most ``rate_per_s`` a second."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval_s = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self.next_at = 0.0

    def wait(self) -> None:
        if not self.interval_s:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + self.interval_s


class _Worker:
    """One worker's structlog logger, file cache and pacer."""

    def __init__(self, settings: ReplaySettings) -> None:
        import structlog

        import zlog

        # The emitter is configured once per process; the processor asks for
        # it on every event, so this holds in forked and spawned workers alike.
        zlog.configure(
            socket_path=settings.socket_path, connect_grace_ms=CONNECT_GRACE_MS
        )
        structlog.configure(
            processors=[
                zlog.ZlogProcessor(
                    service_name=settings.service_name,
                    tenant_id=settings.tenant_id,
                    drop=True,
                ),
            ],
            cache_logger_on_first_use=True,
        )
        self.zlog = zlog
        self.log = structlog.get_logger("zlog.demo")
        self.settings = settings
        self.pacer = _Pacer(settings.rate_per_s / settings.workers)
        self.lines: dict[str, list[str]] = {}

    def replay(self, chunk: Chunk) -> _ChunkDone:
        lines = self._lines_of(chunk.source_file)[chunk.start : chunk.stop]
        calls: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        for line_no, text in enumerate(lines, chunk.start + 1):
            event = parse_line(chunk.source_file, line_no, text)
            fields = dict(event.fields, repeat=chunk.repeat)
            self.pacer.wait()
            started = time.perf_counter()
            getattr(self.log, event.method)(
                event.message, **fields, sent_at=time.time()
            )
            seconds[event.event_class] += time.perf_counter() - started
            calls[event.event_class] += 1
        # A chunk ends when the broker has everything this worker sent: the
        # progress bar counts lines the broker holds, and no more than one
        # chunk waits in this worker's queue.
        flushed = self.zlog.get_emitter().flush(FLUSH_TIMEOUT_S)
        dropped = dict(self.zlog.stats().dropped)

        call_time_s = {name: (calls[name], seconds[name]) for name in calls}

        return _ChunkDone(
            chunk.source_file, len(lines), os.getpid(), flushed, dropped, call_time_s
        )

    def _lines_of(self, source_file: str) -> list[str]:
        if source_file not in self.lines:
            path = self.settings.data_dir / source_file
            self.lines[source_file] = path.read_text(encoding="utf-8").splitlines()

        return self.lines[source_file]


def _init_worker(settings: ReplaySettings) -> None:
    global _worker
    # Ctrl-C is the parent's to handle; SIGTERM (pool.terminate) ends the
    # worker at once, whatever handler a forked worker inherited.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker = _Worker(settings)


def _replay_chunk(chunk: Chunk) -> _ChunkDone:
    assert _worker is not None, f"worker {os.getpid()} was not initialised"

    return _worker.replay(chunk)
