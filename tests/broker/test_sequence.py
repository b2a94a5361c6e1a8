"""Sequence tracking: gaps open, late numbers fill them, old ones are confirmed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zlog.broker.sequence import MAX_OPEN_GAPS, Sequences
from zlog.broker.stats import Stats


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def interleaved(draw, threads: int, count: int) -> list[int]:
    """Numbers 1..count dealt to ``threads`` senders, merged in a drawn order."""
    queues = [list(range(t + 1, count + 1, threads)) for t in range(threads)]
    order = []
    while any(queues):
        ready = [q for q in queues if q]
        order.append(draw(st.sampled_from(ready)).pop(0))

    return order


@st.composite
def threaded_sequences(draw) -> list[int]:
    """One origin's numbers as several threads' connections deliver them."""
    threads = draw(st.integers(1, 8))
    count = draw(st.integers(1, 300))

    return interleaved(draw, threads, count)


@given(threaded_sequences())
def test_every_number_arriving_in_any_order_is_never_missing(order):
    """All numbers arrive, out of order: nothing is missing, nothing pending."""
    clock = Clock()
    sequences = Sequences(clock)

    for seq in order:
        sequences.note("h", 1, seq)
        assert sequences.open >= 0
    clock.now_s += 3600
    sequences.confirm(0.0)

    assert sequences.open == 0
    assert sequences.confirmed_total == 0
    assert sequences.take_confirmed() == {}


@given(
    st.permutations(range(1, 201)),
    st.sets(st.integers(1, 200), max_size=50),
)
def test_missing_numbers_are_counted_exactly_once_and_never_negative(order, lost):
    """Whatever the order, confirmed plus pending is what never arrived above
    the first number seen, and neither count goes below zero."""
    sequences = Sequences(Clock())
    arrived = [seq for seq in order if seq not in lost]

    for seq in arrived:
        sequences.note("h", 1, seq)
        assert sequences.open >= 0
    sequences.confirm(0.0)

    first = arrived[0] if arrived else 0
    expected = sum(1 for seq in lost if first < seq < max(arrived, default=0))
    assert sequences.open == 0
    assert sequences.confirmed_total == expected
    assert sum(sequences.take_confirmed().values()) == expected


def test_gap_is_confirmed_only_after_it_stayed_open():
    """A gap younger than the age given stays pending; an older one is lost."""
    clock = Clock()
    sequences = Sequences(clock)
    for seq in (1, 2, 6):
        sequences.note("h", 1, seq)

    clock.now_s += 5
    sequences.confirm(10.0)
    pending = (sequences.open, sequences.confirmed_total)
    clock.now_s += 5
    sequences.confirm(10.0)

    assert pending == (3, 0)
    assert (sequences.open, sequences.confirmed_total) == (0, 3)
    assert sequences.take_confirmed() == {("h", 1): 3}


def test_late_number_after_confirmation_takes_nothing_back():
    """Once confirmed, a gap is not reopened, and counts never go down."""
    sequences = Sequences(Clock())
    for seq in (1, 4):
        sequences.note("h", 1, seq)
    sequences.confirm(0.0)

    sequences.note("h", 1, 2)

    assert (sequences.open, sequences.confirmed_total) == (0, 2)
    assert sequences.out_of_order == 1


def test_numbers_below_the_first_seen_are_not_missing():
    """A thread's lower numbers arriving after another's first are not a gap."""
    sequences = Sequences(Clock())
    for seq in (100, *range(1, 100), 101):
        sequences.note("h", 1, seq)
    sequences.confirm(0.0)

    assert (sequences.open, sequences.confirmed_total) == (0, 0)
    assert sequences.out_of_order == 99


def test_open_gaps_per_origin_are_bounded():
    """Past the bound the oldest gaps are confirmed at once."""
    sequences = Sequences(Clock())
    for seq in range(1, 2 * (MAX_OPEN_GAPS + 10), 2):
        sequences.note("h", 1, seq)

    assert sequences.confirmed_total == 9
    assert sequences.open == MAX_OPEN_GAPS


@given(threaded_sequences())
def test_status_never_shows_negative_missing_for_a_threaded_origin(order):
    """The status document's counts stay at zero when every event arrived."""
    stats = Stats()

    for seq in order:
        stats.note_sequence("h", 1, seq)
    stats.confirm_gaps(0.0)

    sequence = stats.status()["sequence"]
    assert (sequence["missing"], sequence["pending"]) == (0, 0)
    assert stats.losses.take() == {}


def test_restored_origin_reveals_what_the_previous_broker_never_read():
    """The first number after a restore opens the gap above the restored high."""
    sequences = Sequences(Clock())
    sequences.restore([("h", 1, 100, [])])

    sequences.note("h", 1, 105)
    pending = sequences.open
    sequences.confirm(0.0)

    assert pending == 4
    assert sequences.take_confirmed() == {("h", 1): 4}


def test_restored_gaps_stay_open_and_late_numbers_fill_them():
    """A restored gap is pending like any other; a late number still closes it."""
    sequences = Sequences(Clock())
    sequences.restore([("h", 1, 100, [(90, 92)])])

    sequences.note("h", 1, 91)
    sequences.note("h", 1, 101)
    sequences.confirm(0.0)

    assert sequences.take_confirmed() == {("h", 1): 2}
    assert sequences.out_of_order == 1


def test_a_new_process_reusing_a_restored_pid_starts_afresh():
    """A first number below the restored high and in no gap is another process:
    the old one's gaps are lost, and the new one's numbers open no gap."""
    sequences = Sequences(Clock())
    sequences.restore([("h", 1, 100, [(90, 92)])])

    for seq in (1, 2, 3):
        sequences.note("h", 1, seq)
    sequences.confirm(0.0)

    assert sequences.take_confirmed() == {("h", 1): 3}
    assert (sequences.open, sequences.out_of_order) == (0, 0)
    assert sequences.take_changed() == [("h", 1, 3, [])]


def test_changed_origins_are_taken_once_with_their_state():
    """Each changed origin is listed once, as it is now, then not again."""
    sequences = Sequences(Clock())
    for seq in (1, 2, 5):
        sequences.note("h", 1, seq)
    sequences.note("g", 2, 1)

    first = sorted(sequences.take_changed())
    second = sequences.take_changed()

    assert first == [("g", 2, 1, []), ("h", 1, 5, [(3, 4)])]
    assert second == []
