"""What the broker tells those who run it: systemd, Prometheus, ``zlog status``.

The daemon makes three calls: ``start`` once serving (READY=1, the metrics
endpoint, the heartbeat), ``stopping`` when draining, ``close`` at exit. The
rates worked out here go into ``Stats.rates``, so the status document carries
them. The heartbeat is one task on the
broker's event loop: it sends ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``, so
a loop that stops turning stops the pings and systemd restarts the broker,
and every ``RATE_INTERVAL_S`` it works out event rates from the counters and
sends them as the ``STATUS=`` line. It keeps running while the broker drains,
which may take longer than the watchdog allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING

from zlog.broker.notify import Notifier

if TYPE_CHECKING:
    from zlog.broker.daemon import Broker
    from zlog.broker.metrics import Metrics

__all__ = ["Operations"]

# Rates are averaged over this long: short enough to show a burst in
# ``zlog status``, long enough not to flicker.
RATE_INTERVAL_S = 5.0

# How often the count of open emitter connections is brought up to date.
CONNECTIONS_INTERVAL_S = 1.0


class Operations:
    """systemd notifications, the heartbeat and the metrics endpoint of a broker."""

    def __init__(self, broker: Broker, notifier: Notifier | None = None) -> None:
        self.broker = broker
        self.notifier = notifier or Notifier.from_environment()
        self.metrics: Metrics | None = None
        self._heartbeat: asyncio.Task | None = None
        self._last_totals: tuple[float, int, int, int] | None = None

    async def start(self) -> None:
        """Open the metrics endpoint, tell systemd the broker is ready, beat."""
        await self._serve_metrics()
        self._sample_rates()
        self.notifier.ready(self.status_line())
        self._heartbeat = asyncio.create_task(self._beat())

    def stopping(self) -> None:
        """Tell systemd the broker is draining."""
        self.notifier.stopping(self.status_line())

    async def close(self) -> None:
        """Stop the heartbeat and the endpoint."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self.metrics is not None:
            await self.metrics.close()
        self.notifier.close()

    async def _serve_metrics(self) -> None:
        broker = self.broker
        address = broker.config.metrics_address
        if not address:
            return
        from zlog.broker.metrics import Metrics

        metrics = Metrics(broker)
        try:
            await metrics.serve(address)
        except OSError as exc:
            # Metrics are for watching, not for shipping events: the broker
            # serves without them rather than leave its socket unserved.
            broker.log.warning(
                "metrics_unavailable",
                address=address,
                reason=f"{type(exc).__name__}: {exc}",
                hint="choose another metrics.address, or off",
            )
            return
        broker.publisher.on_batch_acked = metrics.observe_batch
        self.metrics = metrics
        broker.log.info("metrics_serving", address=address)

    async def _beat(self) -> None:
        watchdog_s = self.notifier.watchdog_interval_s or math.inf
        tick_s = min(watchdog_s, CONNECTIONS_INTERVAL_S)
        next_rates = time.monotonic() + RATE_INTERVAL_S
        while True:
            if watchdog_s != math.inf:
                self.notifier.watchdog()
            self.broker.stats.connections = self.broker.listener.connections.update()
            if time.monotonic() >= next_rates:
                next_rates += RATE_INTERVAL_S
                self._sample_rates()
                self.notifier.status(self.status_line())
            await asyncio.sleep(tick_s)

    def _sample_rates(self) -> None:
        """Events per second since the previous sample."""
        stats = self.broker.stats
        published = sum(stats.published) + sum(stats.replayed)
        now = (time.monotonic(), sum(stats.received), published, sum(stats.spooled))
        if self._last_totals is not None:
            elapsed_s = max(now[0] - self._last_totals[0], 1e-9)
            names = ("received_per_s", "published_per_s", "spooled_per_s")
            rates = {
                name: round((new - old) / elapsed_s, 1)
                for name, new, old in zip(
                    names, now[1:], self._last_totals[1:], strict=True
                )
            }
            rates["interval_s"] = round(elapsed_s, 3)
            stats.rates = rates
        self._last_totals = now

    def status_line(self) -> str:
        """One line for ``systemctl status``: state, Kafka, rates, spool."""
        broker = self.broker
        kafka = broker.publisher.status()["state"]
        rates = broker.stats.rates
        spool_events = broker.spool_status.get("events", 0)

        return (
            f"{broker.state}; Kafka {kafka}; "
            f"{rates.get('received_per_s', 0):,.0f} events/s in, "
            f"{rates.get('published_per_s', 0):,.0f}/s to Kafka; "
            f"spool {spool_events:,} events"
        )
