"""The hand-off ledger: what a killed broker leaves is what the next one reads."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from zlog.broker import handoff
from zlog.broker.handoff import HandoffLedger
from zlog.protocol import Event, EventClass


def event(host: str, pid: int, seq: int) -> Event:
    return Event(EventClass.AUDIT, None, None, [], b"{}", host, pid, seq, True)


def pairs(host: str, pid: int, seqs) -> list:
    return [(b"id", event(host, pid, seq)) for seq in seqs]


def reopened(ledger: HandoffLedger) -> handoff.Restored:
    ledger.close()

    return HandoffLedger(ledger.path).open()


def write(ledger: HandoffLedger, origins=()) -> None:
    change = ledger.take_change(list(origins))
    if change is not None:
        ledger.write(change)


def test_units_not_settled_are_restored_as_ranges_by_origin(tmp_path):
    """Events recorded and never settled come back as each origin's ranges."""
    ledger = HandoffLedger(tmp_path / "ledger.db")
    ledger.open()
    ledger.unit(pairs("a", 1, range(1, 6)) + pairs("b", 2, [10, 11, 12]))
    ledger.unit(pairs("a", 1, [6, 9]))

    write(ledger)
    restored = reopened(ledger)

    assert restored.unconfirmed == {("a", 1): [(1, 6), (9, 9)], ("b", 2): [(10, 12)]}
    assert restored.damaged is None


def test_settled_units_leave_the_ledger_at_the_next_write(tmp_path):
    """A unit whose every event settled is deleted; one still pending stays."""
    ledger = HandoffLedger(tmp_path / "ledger.db")
    ledger.open()
    done = ledger.unit(pairs("a", 1, range(1, 5)))
    ledger.unit(pairs("a", 1, [5]))
    write(ledger)

    ledger.settle(done, 3)
    ledger.settle(done, 1)
    write(ledger)

    assert reopened(ledger).unconfirmed == {("a", 1): [(5, 5)]}


def test_a_unit_settled_before_its_write_is_never_written(tmp_path):
    """Nothing is left of a unit that settled before any write took it."""
    ledger = HandoffLedger(tmp_path / "ledger.db")
    ledger.open()
    unit = ledger.unit(pairs("a", 1, [1, 2]))

    ledger.settle(unit, 2)

    assert ledger.take_change([]) is None
    assert reopened(ledger).unconfirmed == {}


def test_origins_are_restored_with_their_highest_number_and_gaps(tmp_path):
    """The last state written of each origin is what the next broker takes up."""
    ledger = HandoffLedger(tmp_path / "ledger.db")
    ledger.open()
    write(ledger, [("a", 1, 50, [(10, 12)]), ("b", 2, 7, [])])
    write(ledger, [("a", 1, 2**64 - 1, [])])

    origins = sorted(reopened(ledger).origins)

    assert origins == [("a", 1, 2**64 - 1, []), ("b", 2, 7, [])]


def test_restored_units_are_deleted_once_reported(tmp_path):
    """After the next broker reported them, a third broker does not see them."""
    ledger = HandoffLedger(tmp_path / "ledger.db")
    ledger.open()
    ledger.unit(pairs("a", 1, [1, 2, 3]))
    write(ledger)
    ledger.close()
    second = HandoffLedger(ledger.path)
    assert second.open().unconfirmed == {("a", 1): [(1, 3)]}

    second.release_restored()
    later = second.unit(pairs("a", 1, [4]))
    write(second)

    third = reopened(second)
    assert third.unconfirmed == {("a", 1): [(4, 4)]}
    assert later.id > 1, "unit ids go on from the previous broker's"


def test_origins_not_heard_from_for_a_day_are_not_restored(tmp_path, monkeypatch):
    """An origin older than the retention is most likely a process that exited."""
    ledger = HandoffLedger(tmp_path / "ledger.db")
    ledger.open()
    day_ago_ns = time.time_ns() - int((handoff.ORIGIN_RETENTION_S + 60) * 1e9)
    with monkeypatch.context() as patch:
        patch.setattr(handoff.time, "time_ns", lambda: day_ago_ns)
        write(ledger, [("old", 1, 9, [])])
    write(ledger, [("new", 2, 9, [])])

    assert reopened(ledger).origins == [("new", 2, 9, [])]


def test_a_damaged_ledger_is_replaced_by_an_empty_one(tmp_path):
    """Garbage at the path is said, removed, and the ledger works again."""
    path = tmp_path / "ledger.db"
    path.write_bytes(b"not a database" * 512)
    ledger = HandoffLedger(path)

    restored = ledger.open()
    ledger.unit(pairs("a", 1, [1]))
    write(ledger)

    assert restored.damaged is not None
    assert restored.unconfirmed == {} and restored.origins == []
    assert reopened(ledger).unconfirmed == {("a", 1): [(1, 1)]}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 300), unique=True, min_size=1, max_size=200))
def test_ranges_cover_exactly_the_numbers_recorded(tmp_path_factory, seqs):
    """Whatever their order, the restored ranges hold the recorded numbers only."""
    ledger = HandoffLedger(tmp_path_factory.mktemp("ledger") / "ledger.db")
    ledger.open()
    half = len(seqs) // 2
    ledger.unit(pairs("a", 1, seqs[:half]))
    ledger.unit(pairs("a", 1, seqs[half:]))
    write(ledger)

    ranges = reopened(ledger).unconfirmed[("a", 1)]

    covered = [seq for first, last in ranges for seq in range(first, last + 1)]
    assert covered == sorted(seqs)
