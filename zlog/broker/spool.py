"""The broker's spool: events kept on disk, in order, while Kafka is away.

How it works:

- One SQLite file in WAL mode, one row per event. The row id is the replay
  order: ids only grow (``AUTOINCREMENT``), even after the oldest rows are
  removed, so ``remove_through(last_id)`` can never touch a newer row.
- ``append`` stores a batch in one transaction and returns only after the
  commit reached the disk (``synchronous=FULL``): an event ``append`` reports
  as stored survives a crash of the process and a loss of power, so the
  broker may acknowledge it.
- ``peek`` reads the oldest events without removing them; the broker removes
  them with ``remove_through`` once Kafka acknowledged them. A crash between
  the two replays them again; the envelope's ``event_id`` lets consumers
  deduplicate.
- The spool is bounded by ``max_bytes`` of stored data. When a batch does not
  fit, the oldest application (and explicit-topic) events are evicted first;
  audit and security events are evicted only under ``DropPolicy.ANY_CLASS``.
  What still does not fit is refused. Every eviction and refusal is counted
  by class and reason.
- ``Spool.open`` checks the file (``PRAGMA quick_check``). A damaged file is
  moved aside to ``<path>.corrupt-<UTC time>``, the rows that can still be
  read are copied into a fresh spool, and ``Spool.recovery`` says what
  happened, so the broker logs it and starts anyway.
- The file is locked exclusively while open: a second broker pointed at the
  same path gets ``SpoolLockedError``, never a share of the rows.

A ``Spool`` is synchronous. The broker calls it from one worker thread (a
``ThreadPoolExecutor(max_workers=1)``); the connection is opened with
``check_same_thread=False`` for that, and an internal lock serializes calls
so two threads can never interleave a transaction. ``docs/spool.md`` is the
prose version of this module.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Self

from zlog import protocol
from zlog.errors import ConfigError, ZlogError
from zlog.protocol import Event, EventClass

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ROW_OVERHEAD_BYTES",
    "AppendResult",
    "DropPolicy",
    "DropReason",
    "Recovery",
    "Spool",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolLockedError",
    "SpoolStats",
    "SpooledRecord",
]

# One hour of Kafka outage at 500 events/s of 500-byte envelopes is 0.9 GB;
# 1 GiB holds that, and is a quarter of the 4 GiB journald allows itself at most.
DEFAULT_MAX_BYTES = 1 << 30

# What a row costs in the file beyond its blobs and strings: the integer
# columns, the b-tree cell, the index entry, page slack. Measured: 200,000
# rows with 500-byte envelopes, two headers and a key take 692 bytes each in
# the file, 139 above their blobs and strings.
ROW_OVERHEAD_BYTES = 140

# A second opener waits this long for the lock before giving up; a broker
# that is shutting down releases it within its own grace period.
LOCK_TIMEOUT_S = 2.0

# After a checkpoint the WAL file is cut back to this size, so a burst of
# writes does not leave a large WAL file behind.
WAL_SIZE_LIMIT_BYTES = 64 << 20

# SQLite's default page size, set explicitly so that salvage can read pages
# even when the file header that records the size is lost.
PAGE_BYTES = 4096

# Rows read per query when salvaging a damaged file.
SALVAGE_CHUNK_ROWS = 512

SCHEMA_VERSION = 1

# Origin sequence numbers are unsigned 64-bit; SQLite stores signed ones.
_U64_RANGE = 1 << 64

# Classes whose events are never evicted under the default policy.
PROTECTED_CLASSES = frozenset({EventClass.AUDIT, EventClass.SECURITY})

_SCHEMA = f"""
CREATE TABLE records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    class INTEGER NOT NULL,
    topic TEXT,
    key BLOB,
    headers BLOB NOT NULL,
    value BLOB NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    wants_ack INTEGER NOT NULL,
    enqueued_ms INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL
);
CREATE INDEX evictable ON records (id)
    WHERE class NOT IN ({EventClass.AUDIT:d}, {EventClass.SECURITY:d});
PRAGMA user_version = {SCHEMA_VERSION};
"""

# The column order of a row everywhere in this module, id excepted.
_COLUMNS = (
    "class, topic, key, headers, value, host, pid, seq, wants_ack, enqueued_ms, "
    "size_bytes"
)
_INSERT = f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_SALVAGED = (
    f"INSERT OR IGNORE INTO records (id, {_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_AFTER = f"SELECT id, {_COLUMNS} FROM records WHERE id > ? ORDER BY id LIMIT ?"
_SELECT_EVICTABLE = f"""
    SELECT id, class, host, pid, size_bytes FROM records
    WHERE class NOT IN ({EventClass.AUDIT:d}, {EventClass.SECURITY:d}) ORDER BY id
"""
_SELECT_OLDEST = "SELECT id, class, host, pid, size_bytes FROM records ORDER BY id"
_DELETE_ONE = "DELETE FROM records WHERE id = ?"

# A stored row without its id, in _COLUMNS order.
_Row = tuple[int, str | None, bytes | None, bytes, bytes, str, int, int, int, int, int]


class SpoolError(ZlogError):
    """The spool file cannot be read or written; the message names the path.

    ``retriable`` is true when the cause may pass (a full disk, an I/O error).
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class SpoolLockedError(SpoolError):
    """Another process (another broker) holds the spool file open."""


class SpoolCorruptError(SpoolError):
    """The spool file turned out damaged while open; reopen it to recover."""


class DropPolicy(enum.Enum):
    """Which stored events may be evicted to make room for new ones."""

    # Only application and explicit-topic events are evicted, oldest first;
    # when that is not enough, new events are refused.
    APPLICATION_ONLY = "application-only"
    # Application and explicit-topic events first, then the oldest audit and
    # security events too.
    ANY_CLASS = "any-class"


class DropReason(enum.StrEnum):
    """Why the spool gave an event up: the label of the drop counters."""

    EVICTED = "spool_evicted"  # a stored event removed to make room
    REFUSED = "spool_refused"  # a new event not stored: no room for it


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One stored event, with its place in the replay order."""

    id: int
    event: Event
    enqueued_ms: int  # when it was appended, Unix time in milliseconds
    size_bytes: int  # what it counts against max_bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What ``append`` did with a batch.

    Attributes:
        stored: the events now committed, in batch order; acknowledge those
            that want an ack.
        refused: the events not stored because the spool is full, in batch
            order; refuse those that want an ack, count the rest.
        evicted: stored events removed to make room, counted by
            (class, origin host, origin pid), for the loss report.
    """

    stored: list[Event]
    refused: list[Event]
    evicted: Counter[tuple[EventClass, str, int]] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """The spool's size and drop counters at one moment."""

    count: int
    size_bytes: int
    max_bytes: int
    counts_by_class: dict[EventClass, int]
    bytes_by_class: dict[EventClass, int]
    drops: dict[tuple[EventClass, DropReason], int]  # since open


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``Spool.open`` did about a damaged spool file."""

    path: Path
    corrupt_path: Path  # where the damaged file (and its WAL) now lies
    reason: str  # what SQLite said was wrong
    salvaged: int  # rows copied from the damaged file into the fresh spool

    @property
    def message(self) -> str:
        """One sentence for the broker's log."""
        return (
            f"spool {self.path} was damaged ({self.reason}); moved it to "
            f"{self.corrupt_path} and started a fresh spool with the "
            f"{self.salvaged} events that could be read"
        )


class _Damaged(Exception):
    """Internal: the file at the spool path is not a usable spool."""


class Spool:
    """A bounded, durable FIFO of events on disk. Create one with ``open``."""

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        max_bytes: int,
        drop_policy: DropPolicy,
        recovery: Recovery | None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.drop_policy = drop_policy
        self.recovery = recovery
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.Lock()
        self._counts: Counter[EventClass] = Counter()
        self._bytes: Counter[EventClass] = Counter()
        self._drops: Counter[tuple[EventClass, DropReason]] = Counter()
        self._load_totals()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        drop_policy: DropPolicy = DropPolicy.APPLICATION_ONLY,
    ) -> Self:
        """Open the spool at ``path``, creating it, or recovering a damaged one.

        A damaged file never makes this fail: see ``Spool.recovery``.

        Raises:
            ConfigError: ``max_bytes`` is not positive.
            SpoolLockedError: another process holds the spool open.
            SpoolError: the file or its directory cannot be opened.
        """
        if max_bytes <= 0:
            raise ConfigError(f"spool max_bytes must be positive, not {max_bytes}")
        path = Path(path)
        _make_directory(path.parent)
        try:
            connection = _connect(path)
            recovery = None
        except _Damaged as damage:
            corrupt_path = _set_aside(path)
            connection = _connect(path)
            try:
                salvaged = _salvage(corrupt_path, connection, max_bytes)
            except sqlite3.Error as exc:
                connection.close()
                raise _translate(exc, path, "write") from exc
            recovery = Recovery(path, corrupt_path, str(damage), salvaged)

        return cls(path, connection, max_bytes, drop_policy, recovery)

    def append(self, events: Sequence[Event]) -> AppendResult:
        """Store a batch of events in one transaction, behind those stored.

        Returns after the commit is on disk. Events that do not fit are
        refused, never raised about.

        Raises:
            SpoolError: the write failed; nothing of the batch is stored.
        """
        now_ms = time.time_ns() // 1_000_000
        rows = [_row(event, now_ms) for event in events]
        stored, evicted = self._store(rows)
        admitted = set(stored)
        result = AppendResult(
            stored=[events[i] for i in stored],
            refused=[e for i, e in enumerate(events) if i not in admitted],
            evicted=evicted,
        )

        return result

    def peek(
        self, limit_records: int, limit_bytes: int, *, after_id: int = 0
    ) -> list[SpooledRecord]:
        """The oldest stored events, oldest first, without removing them.

        Args:
            limit_records: at most this many records.
            limit_bytes: stop before the total ``size_bytes`` would pass this;
                the first record is returned whatever its size.
            after_id: skip records up to this id, to read past a batch still
                in flight.

        Raises:
            SpoolCorruptError: a row cannot be read; reopen the spool.
        """
        with self._lock, _translating(self.path, "read"):
            rows = self._live.execute(
                _SELECT_AFTER, (after_id, limit_records)
            ).fetchall()
        records = []
        total_bytes = 0
        for row in rows:
            total_bytes += row[-1]
            if records and total_bytes > limit_bytes:
                break
            records.append(self._record(row))

        return records

    def remove_through(self, last_id: int) -> int:
        """Remove every record with an id up to ``last_id``; return how many."""
        return self._remove("id <= ?", [(last_id,)])

    def remove(self, ids: Iterable[int]) -> int:
        """Remove the records with these ids; return how many were there."""
        return self._remove("id = ?", [(i,) for i in sorted(set(ids))])

    @property
    def count(self) -> int:
        """How many events are stored."""
        return sum(self._counts.values())

    @property
    def size_bytes(self) -> int:
        """What the stored events count against ``max_bytes``."""
        return sum(self._bytes.values())

    def stats(self) -> SpoolStats:
        """Counts, sizes and drops, for metrics and the status reply."""
        with self._lock:
            return SpoolStats(
                count=self.count,
                size_bytes=self.size_bytes,
                max_bytes=self.max_bytes,
                counts_by_class=dict(+self._counts),
                bytes_by_class=dict(+self._bytes),
                drops=dict(self._drops),
            )

    def close(self) -> None:
        """Close the file; committed events stay. Closing twice is harmless."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _live(self) -> sqlite3.Connection:
        if self._connection is None:
            raise SpoolError(f"spool {self.path} is closed")
        return self._connection

    def _load_totals(self) -> None:
        query = "SELECT class, count(*), sum(size_bytes) FROM records GROUP BY class"
        with _translating(self.path, "read"):
            for event_class, count, size_bytes in self._live.execute(query):
                self._counts[EventClass(event_class)] = count
                self._bytes[EventClass(event_class)] = size_bytes

    def _store(
        self, rows: list[_Row]
    ) -> tuple[list[int], Counter[tuple[EventClass, str, int]]]:
        """Insert what fits of ``rows``, evicting as the policy allows.

        Returns the indexes of the rows stored and the evictions by origin.
        """
        with self._lock, _translating(self.path, "write"):
            admitted = self._admit(rows)
            need_bytes = sum(rows[i][-1] for i in admitted) - self._free_bytes()
            connection = self._live
            connection.execute("BEGIN IMMEDIATE")
            try:
                evicted = self._evict(need_bytes) if need_bytes > 0 else []
                connection.executemany(_INSERT, [rows[i] for i in admitted])
                connection.execute("COMMIT")
            except BaseException:
                connection.rollback()
                raise
            self._account(rows, admitted, evicted)

        return admitted, _by_origin(evicted)

    def _free_bytes(self) -> int:
        return self.max_bytes - self.size_bytes

    def _evictable_bytes(self) -> int:
        if self.drop_policy is DropPolicy.ANY_CLASS:
            return self.size_bytes
        return sum(n for c, n in self._bytes.items() if c not in PROTECTED_CLASSES)

    def _admit(self, rows: list[_Row]) -> list[int]:
        """Pick the rows that will fit: audit and security first, then the rest.

        Each row is admitted if it fits in what is free plus what may be
        evicted; the indexes come back in batch order.
        """
        budget_bytes = self._free_bytes() + self._evictable_bytes()
        first = [i for i, row in enumerate(rows) if row[0] in PROTECTED_CLASSES]
        then = [i for i, row in enumerate(rows) if row[0] not in PROTECTED_CLASSES]
        admitted = []
        for i in first + then:
            size_bytes = rows[i][-1]
            if size_bytes <= budget_bytes:
                admitted.append(i)
                budget_bytes -= size_bytes

        return sorted(admitted)

    def _evict(self, need_bytes: int) -> list[tuple[int, int, str, int, int]]:
        """Delete the oldest evictable rows until ``need_bytes`` are free."""
        queries = [_SELECT_EVICTABLE]
        if self.drop_policy is DropPolicy.ANY_CLASS:
            queries.append(_SELECT_OLDEST)
        victims = []
        for query in queries:
            cursor = self._live.execute(query)
            chosen = []
            while need_bytes > 0 and (victim := cursor.fetchone()) is not None:
                chosen.append(victim)
                need_bytes -= victim[-1]
            cursor.close()
            self._live.executemany(_DELETE_ONE, [(v[0],) for v in chosen])
            victims += chosen

        return victims

    def _account(
        self,
        rows: list[_Row],
        admitted: list[int],
        evicted: list[tuple[int, int, str, int, int]],
    ) -> None:
        """Update the totals and drop counters after a commit."""
        for i in admitted:
            event_class = EventClass(rows[i][0])
            self._counts[event_class] += 1
            self._bytes[event_class] += rows[i][-1]
        for _, event_class, _, _, size_bytes in evicted:
            self._counts[EventClass(event_class)] -= 1
            self._bytes[EventClass(event_class)] -= size_bytes
            self._drops[EventClass(event_class), DropReason.EVICTED] += 1
        stored = set(admitted)
        for i, row in enumerate(rows):
            if i not in stored:
                self._drops[EventClass(row[0]), DropReason.REFUSED] += 1

    def _remove(self, where: str, parameters: list[tuple[int]]) -> int:
        totals = f"SELECT class, count(*), sum(size_bytes) FROM records WHERE {where}"
        counts: Counter[EventClass] = Counter()
        sizes: Counter[EventClass] = Counter()
        with self._lock, _translating(self.path, "write"):
            connection = self._live
            connection.execute("BEGIN IMMEDIATE")
            try:
                for values in parameters:
                    query = totals + " GROUP BY class"
                    for event_class, count, size_bytes in connection.execute(
                        query, values
                    ):
                        counts[EventClass(event_class)] += count
                        sizes[EventClass(event_class)] += size_bytes
                connection.executemany(f"DELETE FROM records WHERE {where}", parameters)
                connection.execute("COMMIT")
            except BaseException:
                connection.rollback()
                raise
            self._counts -= counts
            self._bytes -= sizes
            if self.count == 0:
                # Give the pages of a drained spool back to the file system.
                # (executescript, because execute would free one page per call)
                connection.executescript("PRAGMA incremental_vacuum;")

        return counts.total()

    def _record(self, row: tuple) -> SpooledRecord:
        record_id, event_class, topic, key, headers, value, host, pid, seq = row[:9]
        wants_ack, enqueued_ms, size_bytes = row[9:]
        decoded = protocol.decode_headers(headers) if headers else []
        if isinstance(decoded, protocol.FrameError):
            raise SpoolCorruptError(
                f"spool {self.path} record {record_id} has unreadable headers: "
                "reopen the spool to recover it"
            )
        event = Event(
            event_class=EventClass(event_class),
            topic=topic,
            key=key,
            headers=decoded,
            value=value,
            host=host,
            pid=pid,
            seq=seq % _U64_RANGE,
            wants_ack=bool(wants_ack),
        )

        return SpooledRecord(record_id, event, enqueued_ms, size_bytes)


@contextlib.contextmanager
def _translating(path: Path, doing: str) -> Iterator[None]:
    """Turn sqlite3 errors inside the block into spool errors."""
    try:
        yield
    except sqlite3.Error as exc:
        raise _translate(exc, path, doing) from exc


# SQLite result codes (the low byte of sqlite_errorcode) this module tells apart.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26


def _primary_code(exc: sqlite3.Error) -> int:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF


def _translate(exc: sqlite3.Error, path: Path, doing: str) -> SpoolError:
    code = _primary_code(exc)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return SpoolLockedError(
            f"spool {path} is held by another process: give each broker its own "
            "spool path"
        )
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return SpoolCorruptError(
            f"spool {path} is damaged ({exc}): reopen it to set it aside"
        )
    retriable = code in (_SQLITE_FULL, _SQLITE_IOERR)

    return SpoolError(f"cannot {doing} spool {path}: {exc}", retriable=retriable)


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolError(
            f"cannot create the spool directory {directory}: {exc}"
        ) from exc


def _connect(path: Path) -> sqlite3.Connection:
    """Open, configure and check the spool file; raise ``_Damaged`` if it is bad."""
    try:
        connection = sqlite3.connect(
            path, timeout=LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise _translate(exc, path, "open") from exc
    try:
        _prepare(connection)
    except sqlite3.Error as exc:
        connection.close()
        if _primary_code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            raise _Damaged(str(exc)) from exc
        raise _translate(exc, path, "open") from exc
    except _Damaged:
        connection.close()
        raise

    return connection


def _prepare(connection: sqlite3.Connection) -> None:
    # Exclusive locking before the first read: one broker per file, and in
    # WAL mode no shared-memory file is needed.
    connection.execute("PRAGMA locking_mode = EXCLUSIVE")
    # These two only take effect on a new file, before the table exists.
    connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
    connection.execute(f"PRAGMA page_size = {PAGE_BYTES}")
    connection.execute("PRAGMA journal_mode = WAL")
    # An appended event is acknowledged as safe: its commit must survive a
    # power loss, not only a crash of the process (which NORMAL would give).
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
    problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise _Damaged("; ".join(problems[:3]))
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version == 0 and _has_tables(connection):
        raise _Damaged("the file holds other tables than a spool's")
    if version == 0:
        connection.executescript(_SCHEMA)
    elif version != SCHEMA_VERSION:
        raise _Damaged(f"spool format {version}, this zlog reads {SCHEMA_VERSION}")


def _has_tables(connection: sqlite3.Connection) -> bool:
    query = "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"
    return connection.execute(query).fetchone()[0] > 0


def _set_aside(path: Path) -> Path:
    """Move a damaged spool and its WAL to ``<path>.corrupt-<UTC time>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    corrupt_path = path.with_name(f"{path.name}.corrupt-{stamp}")
    attempt = 1
    while corrupt_path.exists():
        attempt += 1
        corrupt_path = path.with_name(f"{path.name}.corrupt-{stamp}-{attempt}")
    try:
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(corrupt_path.with_name(corrupt_path.name + suffix))
        path.rename(corrupt_path)
        _sync_directory(path.parent)
    except OSError as exc:
        raise SpoolError(
            f"spool {path} is damaged and cannot be moved aside ({exc}): "
            "move or delete it by hand"
        ) from exc

    return corrupt_path


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _salvage(corrupt_path: Path, connection: sqlite3.Connection, max_bytes: int) -> int:
    """Copy what rows can be read from a damaged spool into a fresh one.

    SQL first, through the b-tree and the WAL. When that stumbles over a bad
    page, the file's table leaf pages are also read directly, which finds rows
    whose interior pages were lost (a file cut short); a row read both ways is
    kept as SQL read it. Rows keep their ids, so the replay order holds; they
    are copied in one transaction, a chunk at a time, up to ``max_bytes``.
    Returns how many rows were copied.
    """
    sink = _SalvageSink(connection, max_bytes)
    connection.execute("BEGIN IMMEDIATE")
    try:
        if not _select_salvageable(corrupt_path, sink):
            _scan_leaf_pages(corrupt_path, sink)
        connection.execute("COMMIT")
    except BaseException:
        connection.rollback()
        raise

    return sink.copied


class _SalvageSink:
    """Inserts salvaged rows, ids included, until the spool's bound is reached."""

    def __init__(self, connection: sqlite3.Connection, max_bytes: int) -> None:
        self._connection = connection
        self._free_bytes = max_bytes
        self.copied = 0

    def add(self, rows: list[tuple]) -> None:
        """Insert rows (id first); a row whose id is already there is skipped."""
        fitting = []
        for row in rows:
            if _looks_valid(row) and row[-1] <= self._free_bytes:
                fitting.append(row)
                self._free_bytes -= row[-1]
        before = self._connection.total_changes
        self._connection.executemany(_INSERT_SALVAGED, fitting)
        self.copied += self._connection.total_changes - before


def _select_salvageable(corrupt_path: Path, sink: _SalvageSink) -> bool:
    """Copy the rows SQL can read; return whether it read them without an error.

    Reads in chunks; at a bad page it falls back to one row at a time, then
    skips ids (1, 2, 4, ...) until reads succeed again, up to the highest id
    the file ever gave out.
    """
    uri = f"{corrupt_path.absolute().as_uri()}?mode=ro"
    try:
        source = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error:
        return False
    complete = True
    try:
        highest_id = _highest_id(source)
        after_id, limit, skip = 0, SALVAGE_CHUNK_ROWS, 1
        while True:
            try:
                chunk = source.execute(_SELECT_AFTER, (after_id, limit)).fetchall()
            except sqlite3.Error:
                complete = False
                if limit > 1:
                    limit = 1
                elif after_id < highest_id:
                    after_id, skip = after_id + skip, skip * 2
                else:
                    break
                continue
            if not chunk:
                break
            sink.add(chunk)
            after_id, limit, skip = chunk[-1][0], SALVAGE_CHUNK_ROWS, 1
    finally:
        source.close()

    return complete


def _highest_id(connection: sqlite3.Connection) -> int:
    query = "SELECT seq FROM sqlite_sequence WHERE name = 'records'"
    try:
        row = connection.execute(query).fetchone()
    except sqlite3.Error:
        return 0

    return row[0] if row and isinstance(row[0], int) else 0


# The SQLite file format, as far as reading table rows needs it
# (sqlite.org/fileformat2.html): a 100-byte header on page 1, then pages.
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLE_LEAF_PAGE = 0x0D
_SPOOL_COLUMNS = 12


def _scan_leaf_pages(path: Path, sink: _SalvageSink) -> None:
    """Copy the rows found by reading the file's table leaf pages directly.

    Pages the readable part of the freelist names are skipped: they hold rows
    removed already. With the file header lost, pages are taken to be
    ``PAGE_BYTES`` long and no freelist is known, so removed rows may come
    back (replayed twice rather than lost). A row too large for one page
    (an envelope over about 4 KB) spills into overflow pages and is not
    recovered this way.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(100)
            page_bytes, usable_bytes = _page_geometry(header)
            free_pages = set()
            if header.startswith(_SQLITE_MAGIC):
                free_pages = _freelist_pages(file, header, page_bytes)
            file.seek(0)
            number = 0
            while page := file.read(page_bytes):
                number += 1
                if number in free_pages:
                    continue
                start = 100 if number == 1 else 0
                cells = _leaf_cells(page, start, usable_bytes)
                sink.add([(i, *v[1:]) for i, v in cells if len(v) == _SPOOL_COLUMNS])
    except OSError:
        pass


def _page_geometry(header: bytes) -> tuple[int, int]:
    """Page size and usable bytes per page, from the header if it is readable."""
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return PAGE_BYTES, PAGE_BYTES
    page_bytes = int.from_bytes(header[16:18])
    page_bytes = 65536 if page_bytes == 1 else page_bytes or PAGE_BYTES

    return page_bytes, page_bytes - header[20]


def _freelist_pages(file: BinaryIO, header: bytes, page_bytes: int) -> set[int]:
    """The page numbers on the freelist, as far as its trunk pages can be read."""
    free: set[int] = set()
    trunk = int.from_bytes(header[32:36])
    while trunk and trunk not in free:
        free.add(trunk)
        file.seek((trunk - 1) * page_bytes)
        page = file.read(page_bytes)
        if len(page) < 8:
            break
        count = min(int.from_bytes(page[4:8]), (len(page) - 8) // 4)
        free.update(int.from_bytes(page[8 + 4 * i : 12 + 4 * i]) for i in range(count))
        trunk = int.from_bytes(page[:4])

    return free


def _leaf_cells(page: bytes, start: int, usable_bytes: int) -> Iterator[tuple]:
    """(rowid, column values) of each readable cell on a table leaf page."""
    if len(page) <= start + 8 or page[start] != _TABLE_LEAF_PAGE:
        return
    cell_count = int.from_bytes(page[start + 3 : start + 5])
    max_local_bytes = usable_bytes - 35
    for pointer in range(start + 8, start + 8 + 2 * cell_count, 2):
        try:
            offset = int.from_bytes(page[pointer : pointer + 2])
            payload_bytes, offset = _varint(page, offset)
            row_id, offset = _varint(page, offset)
            if payload_bytes > max_local_bytes:
                continue
            values = _record(page[offset : offset + payload_bytes])
        except (IndexError, ValueError):
            continue
        yield _to_signed64(row_id), values


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """A SQLite varint at ``offset``: its value and the offset after it."""
    value = 0
    for i in range(8):
        byte = data[offset + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, offset + i + 1

    return (value << 8) | data[offset + 8], offset + 9


# Serial types 1 to 7: big-endian integers of these sizes, then a float.
_FIXED_SIZES = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 7: 8, 8: 0, 9: 0}


def _record(payload: bytes) -> list:
    """The column values of one record, or ValueError if it does not parse."""
    header_bytes, offset = _varint(payload, 0)
    serial_types = []
    while offset < header_bytes:
        serial_type, offset = _varint(payload, offset)
        serial_types.append(serial_type)
    values = []
    offset = header_bytes
    for serial_type in serial_types:
        if serial_type in (10, 11):
            raise ValueError(f"reserved serial type {serial_type}")
        size = _FIXED_SIZES.get(serial_type, (serial_type - 12) // 2)
        data = payload[offset : offset + size]
        if len(data) != size:
            raise ValueError("record runs past its cell")
        values.append(_serial_value(serial_type, data))
        offset += size

    return values


def _serial_value(serial_type: int, data: bytes) -> object:
    if serial_type == 0:
        return None
    if serial_type == 7:
        return struct.unpack(">d", data)[0]
    if serial_type in (8, 9):
        return serial_type - 8
    if serial_type < 12:
        return int.from_bytes(data, signed=True)
    if serial_type % 2 == 0:
        return data

    return data.decode()


def _looks_valid(row: tuple) -> bool:
    """A salvaged row has the types ``append`` wrote, and headers that decode."""
    _, event_class, topic, key, headers, value, host, pid, seq = row[:9]
    wants_ack, enqueued_ms, size_bytes = row[9:]
    return (
        event_class in EventClass._value2member_map_
        and isinstance(topic, str | None)
        and isinstance(key, bytes | None)
        and isinstance(headers, bytes)
        and isinstance(value, bytes)
        and isinstance(host, str)
        and all(isinstance(n, int) for n in (pid, seq, wants_ack, enqueued_ms))
        and isinstance(size_bytes, int)
        and not isinstance(protocol.decode_headers(headers), protocol.FrameError)
    )


def _row(event: Event, now_ms: int) -> _Row:
    headers = protocol.encode_headers(event.headers) if event.headers else b""
    topic = event.topic
    size_bytes = (
        len(event.value)
        + len(headers)
        + len(event.key or b"")
        + len(topic or "")
        + len(event.host)
        + ROW_OVERHEAD_BYTES
    )

    return (
        int(event.event_class),
        topic,
        event.key,
        headers,
        event.value,
        event.host,
        event.pid,
        _to_signed64(event.seq),
        int(event.wants_ack),
        now_ms,
        size_bytes,
    )


def _to_signed64(n: int) -> int:
    """An origin sequence number (unsigned 64-bit) as SQLite's signed INTEGER."""
    return n - _U64_RANGE if n >= _U64_RANGE // 2 else n


def _by_origin(
    victims: list[tuple[int, int, str, int, int]],
) -> Counter[tuple[EventClass, str, int]]:
    return Counter((EventClass(c), host, pid) for _, c, host, pid, _ in victims)
