"""The hand-off ledger: what a broker killed in mid-flight leaves for the next.

A broker killed by SIGKILL (or the OOM killer, or a crash) loses what it held
in memory: events it had read but Kafka had not confirmed, and events still
queued in its socket. It cannot count them itself. The next broker on the same
spool can, from this ledger: a small SQLite file beside the spool, written
from the broker's disk thread.

- ``origins``: each origin's highest sequence number received and the numbers
  still missing below it (its open gaps). The next broker takes every origin
  up where this one stopped (``Sequences.restore``), so the next number that
  arrives from it opens the gap of what this broker never read, confirmed and
  reported like any other gap.
- ``handed``: for each *unit* (the events of one dispatch) not yet settled,
  each origin's sequence numbers in it, as inclusive ranges. A unit is written
  before any of its events is handed to the producer or the spool, and deleted
  by the first write after all of them settled (Kafka acknowledged them, the
  spool committed them, or they were counted failed). The next broker reports
  the units it finds as ``unconfirmed_at_crash``, with their ranges: each of
  those events is in Kafka or lost, and only Kafka could tell which.

The file is written without syncing (``synchronous = OFF``): a killed process
loses nothing the kernel already has, which is the case this ledger is for.
After a power loss its last writes may be missing, or the file damaged; a
damaged file is replaced by an empty one, and the losses of that run go
uncounted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from zlog.broker.sequence import MAX_TRACKED_ORIGINS, OriginState
from zlog.errors import ZlogError

__all__ = ["HandoffError", "HandoffLedger", "Restored", "Unit"]

# An origin not heard from for this long is not restored: after a day it is
# most likely a process that exited, and its pid may belong to another by now.
ORIGIN_RETENTION_S = 24 * 3600.0

# A running broker deletes origins past the retention this often.
PRUNE_INTERVAL_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS origins (
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    high TEXT NOT NULL,
    gaps TEXT NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (host, pid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS handed (
    unit INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    seqs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS handed_by_unit ON handed (unit);
"""

# Sequence numbers are unsigned 64-bit; they are stored as JSON text.
_UPSERT_ORIGIN = """
INSERT INTO origins (host, pid, high, gaps, seen_ms) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (host, pid) DO UPDATE SET
    high = excluded.high, gaps = excluded.gaps, seen_ms = excluded.seen_ms
"""

# SQLite's result codes for a file that is not a usable database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_Origin = tuple[str, int]
_Ranges = list[tuple[int, int]]


class HandoffError(ZlogError):
    """The ledger file cannot be read or written; the message names the path."""


class _Damaged(Exception):
    """Internal: the file at the ledger path is not a usable ledger."""


@dataclass(slots=True)
class Unit:
    """The events of one dispatch, pending until every one of them settled."""

    id: int
    pending: int
    # (identity, event) pairs, kept until the unit is written.
    pairs: list | None


@dataclass(frozen=True, slots=True)
class Restored:
    """What a previous broker left in the ledger."""

    origins: list[OriginState] = field(default_factory=list)
    # Events handed to Kafka and never confirmed, by origin.
    unconfirmed: dict[_Origin, _Ranges] = field(default_factory=dict)
    # Why the file was replaced by an empty one, when it was damaged.
    damaged: str | None = None


@dataclass(frozen=True, slots=True)
class _Change:
    units: list[tuple[int, list]]
    settled: list[int]
    origins: list[OriginState]


class HandoffLedger:
    """The ledger file and the units not yet written or not yet settled.

    ``open``, ``write`` and ``close`` run in the disk thread; ``unit``,
    ``settle``, ``release_restored`` and ``take_change`` on the event loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._next_id = 1
        self._new: list[Unit] = []
        self._settled: list[int] = []
        self._restored_ids: list[int] = []
        self._pruned_at = time.monotonic()

    def open(self) -> Restored:
        """Open the file, read what a previous broker left, prune old origins."""
        damaged = None
        try:
            self._connection = _connect(self.path)
        except _Damaged as exc:
            damaged = str(exc)
            _remove(self.path)
            self._connection = _connect(self.path)
        try:
            origins, unconfirmed = self._load()
        except sqlite3.Error as exc:
            raise HandoffError(f"cannot read the ledger {self.path}: {exc}") from exc

        return Restored(origins, unconfirmed, damaged)

    def write(self, change: _Change) -> None:
        """Record new units, forget settled ones, update changed origins."""
        rows = [
            (unit_id, host, pid, json.dumps(ranges))
            for unit_id, pairs in change.units
            for (host, pid), ranges in _runs(pairs).items()
        ]
        now_ms = time.time_ns() // 1_000_000
        origins = [
            (host, pid, str(high), json.dumps(gaps), now_ms)
            for host, pid, high, gaps in change.origins
        ]
        connection = self._live
        try:
            connection.execute("BEGIN")
            connection.executemany("INSERT INTO handed VALUES (?, ?, ?, ?)", rows)
            connection.executemany(
                "DELETE FROM handed WHERE unit = ?", [(i,) for i in change.settled]
            )
            connection.executemany(_UPSERT_ORIGIN, origins)
            if time.monotonic() - self._pruned_at > PRUNE_INTERVAL_S:
                self._prune(now_ms)
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise HandoffError(f"cannot write the ledger {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def unit(self, pairs: list) -> Unit:
        """A new unit for one dispatch's (identity, event) pairs."""
        unit = Unit(self._next_id, len(pairs), pairs)
        self._next_id += 1
        self._new.append(unit)

        return unit

    def settle(self, unit: Unit, count: int) -> None:
        """``count`` events of ``unit`` settled; the last one retires it."""
        unit.pending -= count
        if unit.pending > 0:
            return
        if unit.pairs is not None:
            # Settled before it was ever written: nothing to delete.
            self._new.remove(unit)
        else:
            self._settled.append(unit.id)

    def release_restored(self) -> None:
        """The previous broker's units are reported: delete them at the next write."""
        self._settled += self._restored_ids
        self._restored_ids = []

    def take_change(self, origins: list[OriginState]) -> _Change | None:
        """What the next write must do, or None when nothing changed."""
        if not (self._new or self._settled or origins):
            return None
        units = [(unit.id, unit.pairs) for unit in self._new]
        for unit in self._new:
            unit.pairs = None
        change = _Change(units, self._settled, origins)
        self._new, self._settled = [], []

        return change

    @property
    def dirty(self) -> bool:
        """Whether settled units wait to be deleted."""
        return bool(self._settled)

    @property
    def _live(self) -> sqlite3.Connection:
        if self._connection is None:
            raise HandoffError(f"the ledger {self.path} is closed")
        return self._connection

    def _load(self) -> tuple[list[OriginState], dict[_Origin, _Ranges]]:
        connection = self._live
        self._prune(time.time_ns() // 1_000_000)
        query = (
            "SELECT host, pid, high, gaps FROM origins ORDER BY seen_ms DESC LIMIT ?"
        )
        origins = [
            (host, pid, int(high), [tuple(gap) for gap in json.loads(gaps)])
            for host, pid, high, gaps in connection.execute(
                query, (MAX_TRACKED_ORIGINS,)
            )
        ]
        unconfirmed: dict[_Origin, _Ranges] = {}
        units = set()
        for unit, host, pid, seqs in connection.execute("SELECT * FROM handed"):
            units.add(unit)
            unconfirmed.setdefault((host, pid), []).extend(
                tuple(pair) for pair in json.loads(seqs)
            )
        self._restored_ids = sorted(units)
        self._next_id = max(units, default=0) + 1
        merged = {origin: _merge(ranges) for origin, ranges in unconfirmed.items()}

        return origins, merged

    def _prune(self, now_ms: int) -> None:
        cutoff_ms = now_ms - int(ORIGIN_RETENTION_S * 1000)
        self._live.execute("DELETE FROM origins WHERE seen_ms < ?", (cutoff_ms,))
        self._pruned_at = time.monotonic()


def _connect(path: Path) -> sqlite3.Connection:
    """Open and prepare the file; ``_Damaged`` when it is not a usable ledger."""
    try:
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise HandoffError(f"cannot open the ledger {path}: {exc}") from exc
    try:
        # One broker per spool, so one per ledger: no shared-memory file.
        connection.execute("PRAGMA locking_mode = EXCLUSIVE")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = OFF")
        problem = connection.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise _Damaged(problem)
        connection.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        connection.close()
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
            _SQLITE_CORRUPT,
            _SQLITE_NOTADB,
        ):
            raise _Damaged(str(exc)) from exc
        raise HandoffError(f"cannot open the ledger {path}: {exc}") from exc
    except _Damaged:
        connection.close()
        raise

    return connection


def _remove(path: Path) -> None:
    for damaged in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
        try:
            os.unlink(damaged)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise HandoffError(
                f"cannot replace the damaged ledger {path}: {exc}"
            ) from exc


def _runs(pairs: list) -> dict[_Origin, list[list[int]]]:
    """Each origin's sequence numbers in ``pairs`` as inclusive [first, last] runs."""
    runs: dict[_Origin, list[list[int]]] = {}
    for _, event in pairs:
        seq = event.seq
        origin_runs = runs.get((event.host, event.pid))
        if origin_runs is None:
            runs[event.host, event.pid] = [[seq, seq]]
        elif seq == origin_runs[-1][1] + 1:
            origin_runs[-1][1] = seq
        else:
            origin_runs.append([seq, seq])

    return runs


def _merge(ranges: _Ranges) -> _Ranges:
    """Sorted, disjoint ranges covering the same numbers."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])

    return [(first, last) for first, last in merged]
