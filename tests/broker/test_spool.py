"""The spool keeps events in order on disk, within its bound, through crashes."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from zlog.broker.spool import (
    ROW_OVERHEAD_BYTES,
    DropPolicy,
    DropReason,
    Spool,
    SpoolError,
    SpoolLockedError,
)
from zlog.errors import ConfigError, ZlogError
from zlog.protocol import Event, EventClass

APPLICATION = EventClass.APPLICATION
AUDIT = EventClass.AUDIT
SECURITY = EventClass.SECURITY

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_event(
    seq: int,
    event_class: EventClass = APPLICATION,
    value_bytes: int = 100,
    *,
    pid: int = 1,
) -> Event:
    """An event whose spool size is ``value_bytes + 1 + ROW_OVERHEAD_BYTES``."""
    value = b"{" + b"x" * (value_bytes - 2) + b"}"
    return Event(event_class, None, None, [], value, "h", pid, seq, False)


def size_of(value_bytes: int) -> int:
    return value_bytes + len("h") + ROW_OVERHEAD_BYTES


def seqs(spool: Spool) -> list[int]:
    return [record.event.seq for record in spool.peek(10**9, 10**12)]


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "spool.db"


def test_appended_events_come_back_with_every_field(spool_path: Path) -> None:
    """An event read back from the spool equals the one appended."""
    event = Event(
        event_class=EventClass.TOPIC,
        topic="t.custom",
        key=b"tenant-7",
        headers=[("x-tenant", b"7"), ("x-schema-hash", b"\x00\xff")],
        value=b'{"event_type": "x"}',
        host="web-1",
        pid=4321,
        seq=2**63,
        wants_ack=True,
    )
    with Spool.open(spool_path) as spool:
        spool.append([event])
        (record,) = spool.peek(10, 10**6)

    assert record.event == event
    assert record.id == 1
    assert abs(record.enqueued_ms - time.time() * 1000) < 60_000


def test_order_is_preserved_across_reopen(spool_path: Path) -> None:
    """Batches come back oldest first after the spool is closed and reopened."""
    with Spool.open(spool_path) as spool:
        for batch in range(5):
            spool.append([make_event(batch * 10 + i) for i in range(10)])

    with Spool.open(spool_path) as spool:
        assert seqs(spool) == list(range(50))
        assert spool.count == 50
        assert spool.size_bytes == 50 * size_of(100)
        assert spool.recovery is None


def test_ids_keep_growing_after_the_spool_drains(spool_path: Path) -> None:
    """A drained spool never gives out an id it gave out before."""
    with Spool.open(spool_path) as spool:
        spool.append([make_event(i) for i in range(3)])
        spool.remove_through(3)
        spool.append([make_event(3)])
        (record,) = spool.peek(10, 10**6)

    assert record.id == 4


def test_peek_respects_record_and_byte_limits(spool_path: Path) -> None:
    """Peek stops at either limit and can start after a batch in flight."""
    with Spool.open(spool_path) as spool:
        spool.append([make_event(i) for i in range(10)])

        assert [r.event.seq for r in spool.peek(3, 10**6)] == [0, 1, 2]
        assert len(spool.peek(100, 2 * size_of(100))) == 2
        assert len(spool.peek(100, 1)) == 1
        assert [r.event.seq for r in spool.peek(2, 10**6, after_id=8)] == [8, 9]
        assert spool.count == 10


def test_remove_through_removes_only_records_up_to_the_id(spool_path: Path) -> None:
    """Removing through an id leaves every newer record in place."""
    with Spool.open(spool_path) as spool:
        spool.append([make_event(i, AUDIT if i % 2 else APPLICATION) for i in range(6)])

        assert spool.remove_through(4) == 4
        assert seqs(spool) == [4, 5]
        assert spool.stats().counts_by_class == {APPLICATION: 1, AUDIT: 1}
        assert spool.remove_through(4) == 0


def test_remove_by_ids_removes_exactly_those(spool_path: Path) -> None:
    """Removing named ids keeps the others in order and the totals right."""
    with Spool.open(spool_path) as spool:
        spool.append([make_event(i) for i in range(5)])

        assert spool.remove([2, 4, 99]) == 2
        assert seqs(spool) == [0, 2, 4]
        assert spool.size_bytes == 3 * size_of(100)


def test_size_bound_is_never_exceeded(spool_path: Path) -> None:
    """However much is appended, the stored size stays within max_bytes."""
    max_bytes = 20 * size_of(100)
    with Spool.open(spool_path, max_bytes=max_bytes) as spool:
        for batch in range(30):
            spool.append([make_event(batch * 7 + i) for i in range(7)])
            assert spool.size_bytes <= max_bytes

        assert spool.count == 20
        assert seqs(spool) == list(range(190, 210))


def test_full_spool_evicts_oldest_application_events_and_counts(
    spool_path: Path,
) -> None:
    """Room is made by evicting the oldest application events, counted by class."""
    max_bytes = 10 * size_of(100)
    with Spool.open(spool_path, max_bytes=max_bytes) as spool:
        spool.append([make_event(0, AUDIT)])
        spool.append([make_event(i, APPLICATION, pid=7) for i in range(1, 10)])
        result = spool.append([make_event(i, SECURITY) for i in range(10, 13)])

        assert len(result.stored) == 3
        assert result.refused == []
        assert result.evicted == {(APPLICATION, "h", 7): 3}
        assert seqs(spool) == [0, *range(4, 13)]
        assert spool.stats().drops == {(APPLICATION, DropReason.EVICTED): 3}


def test_audit_and_security_are_never_evicted_by_default(spool_path: Path) -> None:
    """A spool full of audit and security events refuses new ones instead."""
    max_bytes = 4 * size_of(100)
    with Spool.open(spool_path, max_bytes=max_bytes) as spool:
        spool.append([make_event(0, AUDIT), make_event(1, SECURITY)] * 2)
        batch = [make_event(4, AUDIT), make_event(5, APPLICATION)]
        result = spool.append(batch)

        assert result.stored == []
        assert result.refused == batch
        assert seqs(spool) == [0, 1, 0, 1]
        assert spool.stats().drops == {
            (AUDIT, DropReason.REFUSED): 1,
            (APPLICATION, DropReason.REFUSED): 1,
        }


def test_any_class_policy_evicts_audit_once_application_is_gone(
    spool_path: Path,
) -> None:
    """Under ANY_CLASS the oldest audit event goes after every application one."""
    max_bytes = 3 * size_of(100)
    policy = DropPolicy.ANY_CLASS
    with Spool.open(spool_path, max_bytes=max_bytes, drop_policy=policy) as spool:
        spool.append([make_event(0, AUDIT), make_event(1), make_event(2, AUDIT)])
        result = spool.append([make_event(3, SECURITY), make_event(4, SECURITY)])

        assert result.refused == []
        assert result.evicted == {(APPLICATION, "h", 1): 1, (AUDIT, "h", 1): 1}
        assert seqs(spool) == [2, 3, 4]


def test_audit_in_a_batch_is_admitted_before_application(spool_path: Path) -> None:
    """When a batch only partly fits, its audit events take the room first."""
    max_bytes = 2 * size_of(100)
    with Spool.open(spool_path, max_bytes=max_bytes) as spool:
        batch = [make_event(0), make_event(1, AUDIT), make_event(2)]
        result = spool.append(batch)
        stored = seqs(spool)

    assert stored == [0, 1]
    assert result.refused == [batch[2]]


def test_event_larger_than_the_spool_is_refused(spool_path: Path) -> None:
    """An event that could never fit is refused and the rest still stored."""
    with Spool.open(spool_path, max_bytes=1000) as spool:
        huge = make_event(0, AUDIT, value_bytes=2000)
        result = spool.append([huge, make_event(1)])

        assert result.refused == [huge]
        assert seqs(spool) == [1]


def test_totals_are_rebuilt_at_reopen(spool_path: Path) -> None:
    """Counts and sizes by class survive a reopen; drop counters start again."""
    with Spool.open(spool_path, max_bytes=3 * size_of(100)) as spool:
        spool.append([make_event(0, AUDIT), make_event(1), make_event(2, SECURITY)])
        spool.append([make_event(3)])
        before = spool.stats()

    with Spool.open(spool_path, max_bytes=3 * size_of(100)) as spool:
        after = spool.stats()

    assert after.counts_by_class == before.counts_by_class
    assert after.bytes_by_class == before.bytes_by_class
    assert before.drops == {(APPLICATION, DropReason.EVICTED): 1}
    assert after.drops == {}


def test_drained_spool_gives_its_pages_back(spool_path: Path) -> None:
    """Once everything is removed, the file shrinks back to a few pages."""
    with Spool.open(spool_path) as spool:
        for batch in range(20):
            spool.append(
                [make_event(batch * 100 + i, value_bytes=500) for i in range(100)]
            )
        spool.remove_through(10**9)

    assert spool_path.stat().st_size < 64 * 1024


def test_max_bytes_must_be_positive(spool_path: Path) -> None:
    """A zero bound is a configuration error, raised before any file is made."""
    with pytest.raises(ConfigError, match="max_bytes"):
        Spool.open(spool_path, max_bytes=0)

    assert not spool_path.exists()


def test_second_opener_is_refused_and_the_file_left_alone(spool_path: Path) -> None:
    """A second broker on the same spool path gets a lock error, not the rows."""
    with Spool.open(spool_path) as spool:
        spool.append([make_event(0)])
        with pytest.raises(SpoolLockedError, match="another process"):
            Spool.open(spool_path)

    assert sorted(p.name for p in spool_path.parent.iterdir()) == ["spool.db"]


def test_unusable_path_raises_a_spool_error(tmp_path: Path) -> None:
    """A spool path that is a directory raises a zlog error naming it."""
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(SpoolError, match=r"spool\.db") as caught:
        Spool.open(tmp_path / "spool.db")

    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_closed_spool_raises_a_spool_error(spool_path: Path) -> None:
    """Using a closed spool raises a zlog error, and closing again is harmless."""
    spool = Spool.open(spool_path)
    spool.close()
    spool.close()

    with pytest.raises(ZlogError, match="closed"):
        spool.append([make_event(0)])


def write_garbage_page(path: Path) -> None:
    page_bytes = 4096
    pages = path.stat().st_size // page_bytes
    with open(path, "r+b") as file:
        file.seek(page_bytes * (pages // 2))
        file.write(random.Random(5).randbytes(page_bytes))


def truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def overwrite_header(path: Path) -> None:
    with open(path, "r+b") as file:
        file.write(b"not a spool file" * 8)


def replace_with_text(path: Path) -> None:
    path.write_text("this is a log file, not a database\n" * 200)


def replace_with_other_database(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
    connection.close()


@pytest.mark.parametrize(
    ("damage", "salvages"),
    [
        pytest.param(write_garbage_page, True, id="garbage-page"),
        pytest.param(truncate_to_half, True, id="truncated"),
        pytest.param(overwrite_header, True, id="garbage-header"),
        pytest.param(replace_with_text, False, id="not-sqlite"),
        pytest.param(replace_with_other_database, False, id="other-database"),
    ],
)
def test_damaged_file_is_set_aside_and_a_fresh_spool_starts(
    tmp_path: Path, damage: Callable[[Path], None], salvages: bool
) -> None:
    """A damaged spool is moved aside, what can be read is kept, and open succeeds."""
    original = tmp_path / "original.db"
    with Spool.open(original) as spool:
        for batch in range(40):
            spool.append([make_event(batch * 100 + i, AUDIT) for i in range(100)])
    path = tmp_path / "spool.db"
    shutil.copy(original, path)
    damage(path)

    with Spool.open(path) as spool:
        recovery = spool.recovery
        salvaged = seqs(spool)
        spool.append([make_event(-1)])
        after = spool.count

    assert recovery is not None
    assert recovery.corrupt_path.name.startswith("spool.db.corrupt-")
    assert recovery.corrupt_path.exists()
    assert str(recovery.corrupt_path) in recovery.message
    assert recovery.salvaged == len(salvaged)
    assert salvaged == sorted(salvaged)
    assert set(salvaged) <= set(range(4000))
    assert (len(salvaged) > 1000) == salvages
    assert after == len(salvaged) + 1


def test_salvage_keeps_the_order_and_the_bound(tmp_path: Path) -> None:
    """Salvaged events keep their ids and stop at the new spool's max_bytes."""
    path = tmp_path / "spool.db"
    with Spool.open(path) as spool:
        spool.append([make_event(i, AUDIT) for i in range(50)])
        spool.remove_through(10)
    overwrite_header(path)

    with Spool.open(path, max_bytes=20 * size_of(100)) as spool:
        records = spool.peek(100, 10**9)

    assert [r.id for r in records] == list(range(11, 31))
    assert [r.event.seq for r in records] == list(range(10, 30))


def test_recovered_spool_opens_cleanly_next_time(tmp_path: Path) -> None:
    """After a recovery the new spool is whole, so the next open reports nothing."""
    path = tmp_path / "spool.db"
    replace_with_text(path)
    Spool.open(path).close()

    with Spool.open(path) as spool:
        assert spool.recovery is None


APPEND_FOREVER = textwrap.dedent(
    """
    import sys
    from zlog.broker.spool import Spool
    from zlog.protocol import Event, EventClass

    batch_records = int(sys.argv[2])
    spool = Spool.open(sys.argv[1])
    batch = spool.count // batch_records
    while True:
        spool.append([
            Event(EventClass.AUDIT, None, None, [], b"{" + b"x" * 498 + b"}",
                  "h", 1, batch * batch_records + i, True)
            for i in range(batch_records)
        ])
        print(batch, flush=True)
        batch += 1
    """
)


def append_until_killed(path: Path, batch_records: int, batches: int) -> int:
    """Run a writer until it reported ``batches`` commits, SIGKILL it mid-batch.

    Returns the last batch number the writer reported as committed.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", APPEND_FOREVER, str(path), str(batch_records)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        for _ in range(batches):
            line = process.stdout.readline()
            assert line, "the writer exited before it was killed"
            last_committed = int(line)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()

    return last_committed


def test_every_committed_batch_survives_sigkill(tmp_path: Path) -> None:
    """A writer killed mid-append three times loses no committed batch and
    leaves no partial one."""
    path = tmp_path / "spool.db"
    batch_records = 200
    for _ in range(3):
        last_committed = append_until_killed(path, batch_records, batches=25)

        with Spool.open(path) as spool:
            recovery = spool.recovery
            found = seqs(spool)
            count = spool.count

        assert recovery is None
        assert count % batch_records == 0
        assert count // batch_records >= last_committed + 1
        assert found == list(range(count))


def event_strategy() -> st.SearchStrategy[tuple[EventClass, int]]:
    return st.tuples(
        st.sampled_from([APPLICATION, AUDIT, SECURITY, EventClass.TOPIC]),
        st.integers(min_value=2, max_value=300),
    )


class SpoolMachine(RuleBasedStateMachine):
    """The spool against a list: a FIFO with the documented eviction policy."""

    max_bytes = 1500

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="spool-"))
        self.path = self.directory / "spool.db"
        self.spool: Spool | None = None
        self.model: list[tuple[int, Event]] = []
        self.next_id = 1
        self.next_seq = 0

    @initialize(policy=st.sampled_from(list(DropPolicy)))
    def open_spool(self, policy: DropPolicy) -> None:
        self.policy = policy
        self.spool = Spool.open(self.path, self.max_bytes, policy)

    def model_size(self, events: list[Event]) -> int:
        return sum(size_of(len(event.value)) for event in events)

    def model_append(self, batch: list[Event]) -> tuple[list[Event], list[int]]:
        """What the policy says: returns stored events and evicted seqs."""
        stored_events = [event for _, event in self.model]
        free = self.max_bytes - self.model_size(stored_events)
        protected = {AUDIT, SECURITY}
        if self.policy is DropPolicy.ANY_CLASS:
            evictable = stored_events
        else:
            evictable = [e for e in stored_events if e.event_class not in protected]
        budget = free + self.model_size(evictable)
        first = [e for e in batch if e.event_class in protected]
        then = [e for e in batch if e.event_class not in protected]
        admitted = []
        for event in first + then:
            if size_of(len(event.value)) <= budget:
                admitted.append(event)
                budget -= size_of(len(event.value))
        need = self.model_size(admitted) - free
        evicted = []
        order = [(i, e) for i, e in self.model if e.event_class not in protected]
        if self.policy is DropPolicy.ANY_CLASS:
            order += [(i, e) for i, e in self.model if e.event_class in protected]
        for record_id, event in order:
            if need <= 0:
                break
            evicted.append(record_id)
            need -= size_of(len(event.value))
        self.model = [(i, e) for i, e in self.model if i not in evicted]
        kept = [e for e in batch if any(e is a for a in admitted)]
        for event in kept:
            self.model.append((self.next_id, event))
            self.next_id += 1

        return kept, evicted

    @rule(shapes=st.lists(event_strategy(), max_size=8))
    def append(self, shapes: list[tuple[EventClass, int]]) -> None:
        batch = []
        for event_class, value_bytes in shapes:
            batch.append(make_event(self.next_seq, event_class, value_bytes))
            self.next_seq += 1
        expected_stored, _ = self.model_append(batch)

        result = self.spool.append(batch)

        assert result.stored == expected_stored
        assert len(result.refused) == len(batch) - len(expected_stored)

    @rule(limit_records=st.integers(1, 20), limit_bytes=st.integers(1, 3000))
    def peek(self, limit_records: int, limit_bytes: int) -> None:
        expected = []
        total = 0
        for record_id, event in self.model[:limit_records]:
            total += size_of(len(event.value))
            if expected and total > limit_bytes:
                break
            expected.append((record_id, event))

        records = self.spool.peek(limit_records, limit_bytes)

        assert [(r.id, r.event) for r in records] == expected

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_through(self, data: st.DataObject) -> None:
        last_id = data.draw(st.sampled_from([i for i, _ in self.model]))
        expected = sum(1 for i, _ in self.model if i <= last_id)
        self.model = [(i, e) for i, e in self.model if i > last_id]

        assert self.spool.remove_through(last_id) == expected

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_some(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from([i for i, _ in self.model])))
        self.model = [(i, e) for i, e in self.model if i not in ids]

        assert self.spool.remove(ids) == len(set(ids))

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool.open(self.path, self.max_bytes, self.policy)

    @invariant()
    def totals_match_the_model(self) -> None:
        if self.spool is None:
            return
        events = [event for _, event in self.model]
        assert self.spool.count == len(events)
        assert self.spool.size_bytes == self.model_size(events)
        assert self.spool.size_bytes <= self.max_bytes

    def teardown(self) -> None:
        if self.spool is not None:
            self.spool.close()
        shutil.rmtree(self.directory, ignore_errors=True)


SpoolMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None
)
TestSpoolBehavesLikeAFifo = SpoolMachine.TestCase
