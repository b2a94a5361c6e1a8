"""Loss reports: built within the envelope's limits, and never fatal to the broker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
from structlog.testing import capture_logs

from zlog.broker import daemon, loss
from zlog.broker.loss import UNCONFIRMED_AT_CRASH, loss_events
from zlog.client.envelope import MAX_CONTEXT_BYTES, InvalidEvent

from .test_routing import make_broker


def contexts(events) -> list[dict]:
    return [json.loads(event.value)["payload"]["context"] for event in events]


def test_one_event_per_origin_with_its_counts():
    """Each origin's counts go out in one zlog.loss event, numbered in turn."""
    taken = {("h", 1): {"sequence_gap": 2}, ("h", 2): {"emitter_error": 3}}

    events = loss_events(taken, seq=10)

    assert [event.seq for event in events] == [11, 12]
    assert [(c["origin"], c["counts"], c["total"]) for c in contexts(events)] == [
        ({"host": "h", "pid": 1}, {"sequence_gap": 2}, 2),
        ({"host": "h", "pid": 2}, {"emitter_error": 3}, 3),
    ]


def test_report_over_the_context_limit_is_split_into_events_that_add_up():
    """Counts whose context would exceed 64 KiB go out in several events of the
    origin, each within the limit, adding up to what was taken."""
    counts = {f"reason_{i}_" + "x" * 5000: i + 1 for i in range(30)}

    events = loss_events({("h", 1): counts}, seq=0)

    assert len(events) > 1
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    summed: dict[str, int] = {}
    for context in contexts(events):
        assert len(json.dumps(context)) <= MAX_CONTEXT_BYTES
        assert context["origin"] == {"host": "h", "pid": 1}
        assert context["total"] == sum(context["counts"].values())
        summed.update(context["counts"])
    assert summed == counts


def test_unconfirmed_ranges_over_the_limit_are_split_and_all_listed(monkeypatch):
    """Ranges too many for one event are spread over several; none is lost."""
    monkeypatch.setattr(loss, "MAX_RANGES_PER_REPORT", 4000)
    base = 10**15
    ranges = [(base + 3 * i, base + 3 * i + 1) for i in range(4000)]
    taken = {("h", 1): {UNCONFIRMED_AT_CRASH: 8000, "sequence_gap": 1}}

    events = loss_events(taken, seq=0, ranges={("h", 1): ranges})

    assert len(events) > 2
    listed = [
        tuple(pair) for c in contexts(events) for pair in c.get("unconfirmed_seqs", [])
    ]
    assert sorted(listed) == ranges
    totals = [c["counts"].get(UNCONFIRMED_AT_CRASH, 0) for c in contexts(events)]
    assert sum(totals) == 8000


def test_report_refused_for_another_reason_than_size_raises(monkeypatch):
    """Splitting cannot mend an invalid field: the builder's error is raised."""
    monkeypatch.setenv("TENANT_ID", "t" * 1000)

    with pytest.raises(InvalidEvent, match="tenant_id"):
        loss_events({("h", 1): {"sequence_gap": 1}}, seq=0)


def reporting_broker(**settings):
    """A broker without Kafka whose dispatched events are kept in a list."""
    broker = make_broker()
    if settings:
        broker.config = dataclasses.replace(broker.config, **settings)
    broker.dispatched = []

    async def dispatch(pairs):
        broker.dispatched += [event for _, event in pairs]

    broker._dispatch = dispatch

    return broker


def test_failed_loss_report_is_counted_logged_and_the_next_one_goes_out(
    monkeypatch,
):
    """A report that cannot be built neither raises nor ends reporting."""
    broker = reporting_broker()
    broker.stats.losses.add("h", 1, "sequence_gap", 4)
    monkeypatch.setenv("TENANT_ID", "t" * 1000)

    with capture_logs() as logs:
        asyncio.run(broker._report_losses(gap_age_s=0.0))
    monkeypatch.delenv("TENANT_ID")
    broker.stats.losses.add("h", 1, "sequence_gap", 2)
    asyncio.run(broker._report_losses(gap_age_s=0.0))

    failed = [log for log in logs if log["event"] == "loss_report_failed"]
    assert [(log["events"], log["log_level"]) for log in failed] == [(4, "warning")]
    status = broker.stats.status()
    assert status["losses_not_reported"] == 4
    assert status["losses_reported"] == {"sequence_gap": 2}
    assert [c["counts"] for c in contexts(broker.dispatched)] == [{"sequence_gap": 2}]


def test_loss_loop_outlives_a_report_that_raises(monkeypatch):
    """The loss-report task keeps running after a report failed."""
    broker = reporting_broker(loss_report_interval_s=0.01)
    calls = []

    def flaky(taken, seq, ranges=None):
        calls.append(taken)
        if len(calls) == 1:
            raise InvalidEvent("too_large", "context is 80081 bytes serialized")
        return loss_events(taken, seq, ranges)

    monkeypatch.setattr(daemon, "loss_events", flaky)

    async def scenario():
        task = asyncio.create_task(broker._loss_loop())
        for count in (1, 2):
            broker.stats.losses.add("h", 1, "sequence_gap", count)
            deadline = time.monotonic() + 5
            while len(calls) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        broker.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())

    assert len(calls) == 2
    assert broker.stats.losses_not_reported == 1
    assert [c["counts"] for c in contexts(broker.dispatched)] == [{"sequence_gap": 2}]


def test_stopping_tasks_never_raises_what_a_task_raised():
    """A background task that died is logged once and does not stop the drain."""
    broker = make_broker()

    async def crash():
        raise RuntimeError("replay step failed")

    async def wait_forever():
        await asyncio.Event().wait()

    async def scenario():
        broker._tasks = [
            asyncio.create_task(crash(), name="replay"),
            asyncio.create_task(wait_forever(), name="loss_report"),
        ]
        for task in broker._tasks:
            task.add_done_callback(broker._task_ended)
        await asyncio.sleep(0.01)
        await broker._stop_tasks(time.monotonic() + 0.2)

        return broker._tasks

    with capture_logs() as logs:
        tasks = asyncio.run(scenario())

    assert all(task.done() for task in tasks)
    assert [(log["event"], log["task"], log["log_level"]) for log in logs] == [
        ("task_failed", "replay", "error")
    ]
