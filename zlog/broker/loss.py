"""Loss accounting: what the broker knows was lost, per origin, and its report.

Four sources feed the ledger: gaps in an origin's sequence numbers (counted
by ``Stats.confirm_gaps``), drops an emitter reports itself, events the
spool evicted or refused, and the events a killed broker had handed to Kafka
without its confirmation (``zlog.broker.handoff``), which the next broker
reports with their sequence ranges because each of them may or may not be in
Kafka. Counts pile up per origin until the broker takes
them and publishes one ``zlog.loss`` application event per origin, an
envelope like any other, so consumers of the application topic see loss
where they see everything else. A report too large for one envelope is
split over several events of the origin.

The sources do not overlap: an event an emitter dropped took no sequence
number (``zlog.client.emitter``), so it is counted as the emitter's drop and
never again as a gap. A sequence gap reaches the ledger only once it has
stayed open long enough that no late number will fill it
(``zlog.broker.sequence``), so counts only grow, and what was reported is
never taken back.
"""

from __future__ import annotations

import os
import socket
from collections import Counter

from zlog import protocol
from zlog.client.envelope import EnvelopeBuilder, InvalidEvent
from zlog.protocol import Event, EventClass

__all__ = [
    "LOSS_MESSAGE",
    "SEQUENCE_GAP",
    "UNCONFIRMED_AT_CRASH",
    "LossLedger",
    "loss_events",
]

LOSS_MESSAGE = "zlog.loss"

# The ledger's reason for numbers missing from an origin's sequence for longer
# than one loss-report interval.
SEQUENCE_GAP = "sequence_gap"

# The ledger's reason for events a broker that died had handed to Kafka (or
# was about to) without Kafka's confirmation: in Kafka or lost, unknown which.
UNCONFIRMED_AT_CRASH = "unconfirmed_at_crash"

# A report lists at most this many sequence ranges per origin.
MAX_RANGES_PER_REPORT = 256

# A report names at most this many origins; the rest are summed under one
# origin "other", so a flood of short-lived processes cannot flood Kafka.
MAX_ORIGINS_PER_REPORT = 100

_Origin = tuple[str, int]


class LossLedger:
    """Losses by origin and reason, not yet published."""

    def __init__(self) -> None:
        self._pending: dict[_Origin, Counter[str]] = {}
        # The sequence ranges of unconfirmed events, by origin, not yet taken.
        self._unconfirmed: dict[_Origin, list[tuple[int, int]]] = {}
        # By reason, since start: what went out in zlog.loss events.
        self.reported: Counter[str] = Counter()

    def add(self, host: str, pid: int, reason: str, count: int) -> None:
        """Count ``count`` events of origin (host, pid) lost for ``reason``."""
        self._pending.setdefault((host, pid), Counter())[reason] += count

    def add_unconfirmed(
        self, host: str, pid: int, ranges: list[tuple[int, int]]
    ) -> None:
        """Count the events in ``ranges`` (inclusive) as unconfirmed at a crash."""
        count = sum(last - first + 1 for first, last in ranges)
        self.add(host, pid, UNCONFIRMED_AT_CRASH, count)
        self._unconfirmed.setdefault((host, pid), []).extend(ranges)

    def take_ranges(self) -> dict[_Origin, list[tuple[int, int]]]:
        """The unconfirmed ranges by origin added since the last call."""
        taken, self._unconfirmed = self._unconfirmed, {}

        return taken

    def take(self) -> dict[_Origin, dict[str, int]]:
        """The positive counts by origin; they are cleared, the rest kept."""
        taken = {}
        for origin, counts in list(self._pending.items()):
            positive = {r: n for r, n in counts.items() if n > 0}
            if positive:
                taken[origin] = positive
                for reason in positive:
                    del counts[reason]
            if not counts:
                del self._pending[origin]

        return taken

    def mark_reported(self, taken: dict[_Origin, dict[str, int]]) -> None:
        """Add counts ``take`` gave to ``reported``, once their report went out."""
        for counts in taken.values():
            self.reported.update(counts)


def loss_events(
    taken: dict[_Origin, dict[str, int]],
    seq: int,
    ranges: dict[_Origin, list[tuple[int, int]]] | None = None,
) -> list[Event]:
    """The ``zlog.loss`` application events reporting ``taken``, by origin.

    ``seq`` numbers the broker's own events; each event uses the next.
    ``ranges`` gives an origin's unconfirmed sequence numbers, listed in its
    event as ``unconfirmed_seqs`` (inclusive pairs, at most
    ``MAX_RANGES_PER_REPORT``). One event per origin, unless its context
    would exceed the envelope's limit: the report is then split over several
    events of that origin, whose counts add up to the origin's.

    Raises:
        InvalidEvent: an envelope could not be built even for one reason.
    """
    builder = EnvelopeBuilder(strict=False)
    broker_host = socket.gethostname()
    instance_id = f"{broker_host}:{os.getpid()}"
    tenant_id = os.environ.get("TENANT_ID") or "default"

    def build(context: dict) -> tuple:
        return builder.application(
            service_name="zlog-broker",
            instance_id=instance_id,
            level="WARN",
            logger="zlog.broker",
            message=LOSS_MESSAGE,
            code=LOSS_MESSAGE,
            context=context,
            tenant_id=tenant_id,
        )

    events = []
    ranges = ranges or {}
    for (host, pid), counts in _capped(taken).items():
        unconfirmed = sorted(ranges.get((host, pid), ()))[:MAX_RANGES_PER_REPORT]
        for event_class, value, key, headers in _built(
            build, {"host": host, "pid": pid}, counts, unconfirmed
        ):
            seq += 1
            events.append(
                Event(
                    event_class=EventClass(event_class),
                    topic=None,
                    key=key,
                    headers=_decoded(headers),
                    value=value,
                    host=broker_host,
                    pid=os.getpid(),
                    seq=seq,
                    wants_ack=False,
                )
            )

    return events


def _built(
    build, origin: dict, counts: dict[str, int], unconfirmed: list[tuple[int, int]]
) -> list[tuple]:
    """One origin's report as envelopes: one, or halves while it is too large."""
    context = {"origin": origin, "counts": counts, "total": sum(counts.values())}
    if unconfirmed:
        context["unconfirmed_seqs"] = [list(pair) for pair in unconfirmed]
    try:
        return [build(context)]
    except InvalidEvent as exc:
        halves = _halves(counts, unconfirmed)
        if exc.reason != "too_large" or halves is None:
            raise
    first, second = halves

    return [*_built(build, origin, *first), *_built(build, origin, *second)]


def _halves(counts: dict[str, int], unconfirmed: list[tuple[int, int]]):
    """A report's counts and ranges in two parts, or None when it cannot split.

    The ranges stay with the count of unconfirmed events while there are
    several reasons; then they are split, the second part counting nothing.
    """
    reasons = list(counts)
    if len(reasons) > 1:
        middle = len(reasons) // 2
        first = {r: counts[r] for r in reasons[:middle]}
        second = {r: counts[r] for r in reasons[middle:]}
        if UNCONFIRMED_AT_CRASH in first:
            return (first, unconfirmed), (second, [])
        return (first, []), (second, unconfirmed)
    if len(unconfirmed) > 1:
        middle = len(unconfirmed) // 2
        return (counts, unconfirmed[:middle]), ({}, unconfirmed[middle:])

    return None


def _capped(taken: dict[_Origin, dict[str, int]]) -> dict[_Origin, dict[str, int]]:
    if len(taken) <= MAX_ORIGINS_PER_REPORT:
        return taken
    origins = sorted(taken, key=lambda o: -sum(taken[o].values()))
    capped = {o: taken[o] for o in origins[: MAX_ORIGINS_PER_REPORT - 1]}
    other: Counter[str] = Counter()
    for origin in origins[MAX_ORIGINS_PER_REPORT - 1 :]:
        other.update(taken[origin])
    capped["other", 0] = dict(other)

    return capped


def _decoded(headers: object) -> list[tuple[str, bytes]]:
    """Headers as the protocol's list, whichever form the builder gave."""
    if isinstance(headers, bytes):
        decoded = protocol.decode_headers(headers)
        return [] if isinstance(decoded, protocol.FrameError) else decoded

    return list(headers or [])
