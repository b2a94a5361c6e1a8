"""The daemon's connection to Kafka, with the publisher's start faked."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from zlog.errors import ConfigError

from .test_routing import make_broker

REFUSAL = "topic 'u.v1' does not exist in Kafka and the broker does not create topics"


async def refuse_topic() -> None:
    raise ConfigError(REFUSAL)


def test_topic_refused_at_start_stops_the_broker():
    """At start, a topic Kafka lacks or refuses is a setting to fix: raised."""
    broker = make_broker()
    broker.publisher.start = refuse_topic

    with pytest.raises(ConfigError, match="does not exist"):
        asyncio.run(broker._connect())


def test_topic_refused_on_a_later_connect_keeps_spooling_and_says_why():
    """Kafka reached only after the start refuses a topic: the broker keeps
    serving into the spool, says why, and tries again later.
    """
    with capture_logs() as logs:
        broker = make_broker()
        broker.publisher.start = refuse_topic
        broker.state = "serving"
        connected = asyncio.run(broker._connect())

    assert connected is False
    assert [(log["event"], log["reason"]) for log in logs] == [
        ("kafka_refused", REFUSAL)
    ]
