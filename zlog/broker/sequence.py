"""Sequence tracking: which of an origin's numbers have not arrived, and for how long.

Every event and drop report an emitter sends carries its origin (host, pid)
and the next number of one counter per process. An emitter sending from
several threads uses one connection per thread, and the ROUTER queues each
connection separately, so one origin's numbers arrive out of order: a higher
number may come first and the lower ones a few cycles later. A missing
number is therefore only *open* when its gap appears, and is *confirmed*
lost once it has stayed open for a while (``confirm``), or when an origin
holds more open gaps than the bound allows. A late number closes its part of
an open gap; a confirmed gap is never reopened or taken back, so the counts
never go down and a late arrival never produces a loss report.

Numbers below the first one seen from an origin are never counted missing:
they were sent before this broker started listening, or they are arriving
late from another thread. Repeated numbers are counted out of order only.

A broker can take up origins where a previous one stopped (``restore``, from
the loss ledger a killed broker leaves): the origin's highest number and its
open gaps. The next number that arrives from it then opens the gap of what
the previous broker never read, and the restored gaps stay open like any
other. When that first number is at or below the restored highest one and in
no restored gap, the origin is a new process that reuses the pid: its
restored gaps are confirmed lost and it starts afresh.
"""

from __future__ import annotations

import bisect
import time

__all__ = ["MAX_OPEN_GAPS", "MAX_TRACKED_ORIGINS", "OriginState", "Sequences"]

# Per-origin tracking is kept for this many origins at most; a host rarely
# runs more processes than this between two broker restarts.
MAX_TRACKED_ORIGINS = 65_536

# Open gaps kept per origin: a thread that lags behind the others leaves one
# gap per interleaving, and a few hundred threads per process is already a
# lot. Past the bound the oldest gaps are confirmed at once, so memory stays
# bounded whatever an emitter sends.
MAX_OPEN_GAPS = 1024

_Origin = tuple[str, int]

# (host, pid, highest number, open gaps as (first, last) pairs): what the loss
# ledger keeps of an origin.
OriginState = tuple[str, int, int, list[tuple[int, int]]]


class _Track:
    """One origin: its highest number and its open gaps, oldest first."""

    __slots__ = ("gaps", "high")

    def __init__(self, seq: int) -> None:
        self.high = seq
        # [first, last, opened_at monotonic s]; sorted by first, which is also
        # the order they were opened in.
        self.gaps: list[list] = []


class Sequences:
    """Open and confirmed gaps in the sequence numbers of every origin."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._origins: dict[_Origin, _Track] = {}
        # Origins with at least one open gap, so ``confirm`` never scans all.
        self._gapped: set[_Origin] = set()
        self.open = 0  # numbers in open gaps
        self.out_of_order = 0  # numbers that arrived below the highest seen
        # Confirmed numbers by origin, not yet taken by ``take_confirmed``.
        self._confirmed: dict[_Origin, int] = {}
        self.confirmed_total = 0
        # Origins whose highest number or gaps changed since ``take_changed``.
        self._changed: set[_Origin] = set()
        # Restored origins from which no number has arrived yet.
        self._resuming: set[_Origin] = set()

    def __len__(self) -> int:
        return len(self._origins)

    def note(self, host: str, pid: int, seq: int) -> None:
        """Record that number ``seq`` of origin (host, pid) arrived."""
        origin = (host, pid)
        state = self._origins.get(origin)
        self._changed.add(origin)
        if self._resuming and origin in self._resuming:
            state = self._resume(origin, state, seq)
        if state is None:
            if len(self._origins) >= MAX_TRACKED_ORIGINS:
                self._forget_all()
            self._origins[origin] = _Track(seq)
        elif seq == state.high + 1:
            state.high = seq
        elif seq > state.high:
            self._open(origin, state, state.high + 1, seq - 1)
            state.high = seq
        else:
            self.out_of_order += 1
            if state.gaps:
                self._fill(origin, state, seq)

    def confirm(self, max_age_s: float) -> None:
        """Confirm as lost every gap open for ``max_age_s`` or longer."""
        cutoff = self._clock() - max_age_s
        for origin in list(self._gapped):
            gaps = self._origins[origin].gaps
            count = 0
            while gaps and gaps[0][2] <= cutoff:
                first, last, _ = gaps.pop(0)
                count += last - first + 1
            self._count_confirmed(origin, count)
            if not gaps:
                self._gapped.discard(origin)

    def restore(self, origins: list[OriginState]) -> None:
        """Take up origins where a previous broker left them.

        Their gaps open now, so a late number still fills them within the
        usual wait. An origin this broker already tracks is left as it is.
        """
        for host, pid, high, gaps in origins:
            origin = (host, pid)
            if origin in self._origins or len(self._origins) >= MAX_TRACKED_ORIGINS:
                continue
            state = self._origins[origin] = _Track(high)
            for first, last in gaps:
                self._open(origin, state, first, last)
            self._resuming.add(origin)

    def take_changed(self) -> list[OriginState]:
        """The origins whose state changed since the last call, as they are now."""
        changed, self._changed = self._changed, set()
        states = []
        for origin in changed:
            state = self._origins.get(origin)
            if state is not None:
                gaps = [(first, last) for first, last, _ in state.gaps]
                states.append((*origin, state.high, gaps))

        return states

    def take_confirmed(self) -> dict[_Origin, int]:
        """Numbers confirmed lost since the last call, by origin."""
        taken, self._confirmed = self._confirmed, {}

        return taken

    def _open(self, origin: _Origin, state: _Track, first: int, last: int) -> None:
        gaps = state.gaps
        gaps.append([first, last, self._clock()])
        self.open += last - first + 1
        self._gapped.add(origin)
        if len(gaps) > MAX_OPEN_GAPS:
            first, last, _ = gaps.pop(0)
            self._count_confirmed(origin, last - first + 1)

    def _fill(self, origin: _Origin, state: _Track, seq: int) -> None:
        """Close ``seq`` in the open gap holding it, if one does."""
        gaps = state.gaps
        index = bisect.bisect_right(gaps, seq, key=lambda gap: gap[0]) - 1
        if index < 0 or gaps[index][1] < seq:
            return  # a repeat, or below the first number seen
        first, last, opened_at = gaps[index]
        pieces = []
        if first < seq:
            pieces.append([first, seq - 1, opened_at])
        if seq < last:
            pieces.append([seq + 1, last, opened_at])
        gaps[index : index + 1] = pieces
        self.open -= 1
        if not gaps:
            self._gapped.discard(origin)

    def _resume(self, origin: _Origin, state: _Track, seq: int) -> _Track | None:
        """The first number from a restored origin: the same process, or a new one."""
        self._resuming.discard(origin)
        if seq > state.high or any(g[0] <= seq <= g[1] for g in state.gaps):
            return state
        # A number the previous broker had already passed and was not
        # waiting for: another process now has this pid. What the old one
        # never delivered is lost.
        lost = sum(last - first + 1 for first, last, _ in state.gaps)
        self._count_confirmed(origin, lost)
        self._gapped.discard(origin)
        del self._origins[origin]

        return None

    def _count_confirmed(self, origin: _Origin, count: int) -> None:
        if count:
            self._changed.add(origin)
            self.open -= count
            self.confirmed_total += count
            self._confirmed[origin] = self._confirmed.get(origin, 0) + count

    def _forget_all(self) -> None:
        # TODO: origins are forgotten all at once past MAX_TRACKED_ORIGINS,
        # and the numbers still open in their gaps are then never counted.
        self._origins.clear()
        self._gapped.clear()
        self._resuming.clear()
        self.open = 0
