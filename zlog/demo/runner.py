"""One run of the demo, from fresh topics to the printed verdict.

Every resource the run makes is released in ``run``'s ``finally``, in
reverse order: the pool (terminated on Ctrl-C), the broker (SIGTERM, then a
bounded wait), the private socket directory. SIGTERM to the demo itself is
handled like Ctrl-C, so ``scripts/demo`` can stop it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from zlog.demo import broker_process, replay, verify
from zlog.demo.broker_process import BrokerProcess, Topics
from zlog.errors import ZlogError

__all__ = ["DemoRun"]

# The demo reads back at most this long after the broker stopped.
DEFAULT_READ_TIMEOUT_S = 120.0

EXIT_INTERRUPTED = 130


@dataclass
class DemoRun:
    """The settings of one run; ``run`` does the work."""

    data_dir: Path
    bootstrap_servers: str
    topics: Topics
    workers: int
    repeat: int
    rate_per_s: float
    service_name: str
    tenant_id: str
    start_method: str | None
    progress: bool
    delete_topics: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoRun:
        prefix = args.topic_prefix or (
            f"zlog-demo-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        )
        topics = Topics(
            application=args.application_topic or f"{prefix}.application",
            audit=args.audit_topic or f"{prefix}.audit",
            security=args.security_topic or f"{prefix}.security",
        )

        return cls(
            data_dir=args.data_dir,
            bootstrap_servers=args.bootstrap_servers,
            topics=topics,
            workers=args.workers,
            repeat=args.repeat,
            rate_per_s=args.rate,
            service_name=args.service_name,
            tenant_id=args.tenant_id,
            start_method=args.start_method,
            progress=not args.no_progress,
            delete_topics=args.delete_topics,
        )

    def run(self) -> int:
        """Replay, stop the broker, check; the process exit code."""
        if self.workers < 1 or self.repeat < 1:
            print(
                "zlog demo: --workers and --repeat must be at least 1", file=sys.stderr
            )
            return 2
        try:
            sources = replay.read_sources(self.data_dir)
        except OSError as exc:
            print(f"zlog demo: cannot read the samples: {exc}", file=sys.stderr)
            return 2

        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        work_dir = Path(tempfile.mkdtemp(prefix="zlog-demo-", dir="/tmp"))
        broker = BrokerProcess(
            work_dir / "broker.sock",
            self.bootstrap_servers,
            self.topics,
            work_dir / "broker.log",
        )
        keep_work_dir = False
        try:
            return self._run(sources, broker)
        except ZlogError as exc:
            keep_work_dir = True
            print(f"zlog demo: {exc}\n{broker.log_tail()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nzlog demo: interrupted; stopping the broker", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception:
            keep_work_dir = True
            raise
        finally:
            code = broker.stop()
            if code not in (None, 0):
                keep_work_dir = True
                print(
                    f"zlog demo: the broker's log is {broker.log_path}", file=sys.stderr
                )
            if not keep_work_dir:
                shutil.rmtree(work_dir, ignore_errors=True)
            signal.signal(signal.SIGTERM, previous)

    def _run(self, sources: dict[str, list[str]], broker: BrokerProcess) -> int:
        expected = replay.expected_events(sources, self.repeat)
        line_counts = {name: len(lines) for name, lines in sources.items()}
        total = sum(line_counts.values()) * self.repeat
        topic_of_class = self.topics.by_class()

        try:
            asyncio.run(
                broker_process.create_topics(
                    self.bootstrap_servers, list(topic_of_class.values())
                )
            )
        except Exception as exc:
            print(
                f"zlog demo: cannot create topics on Kafka at {self.bootstrap_servers} "
                f"({exc!r}); is it running? make kafka-up starts one",
                file=sys.stderr,
            )
            return 1
        broker.start()
        print(self._banner(total, broker), flush=True)
        started = time.perf_counter()
        result = self._replay(broker, line_counts, total)
        replay_s = time.perf_counter() - started

        print(
            "zlog demo: stopping the broker (SIGTERM drains it into Kafka)", flush=True
        )
        broker_exit_code = broker.stop()
        print("zlog demo: reading the topics back from the beginning", flush=True)
        arrivals = asyncio.run(
            verify.read_topics(
                self.bootstrap_servers,
                topic_of_class.values(),
                timeout_s=DEFAULT_READ_TIMEOUT_S,
            )
        )
        verdict = verify.judge(arrivals, expected, topic_of_class)
        figures = verify.ReplayFigures(
            lines_by_source={name: result.logged.get(name, 0) for name in sources},
            emitter_drops=dict(result.dropped),
            unflushed_chunks=result.unflushed_chunks,
            call_time_s=result.call_time_s,
            repeat=self.repeat,
            workers=self.workers,
            replay_s=replay_s,
            broker_exit_code=broker_exit_code,
        )
        print(
            verify.render_report(figures, arrivals, expected, topic_of_class, verdict)
        )
        self._finish_topics()

        return 0 if verdict.passed and broker_exit_code == 0 else 1

    def _replay(
        self, broker: BrokerProcess, line_counts: dict[str, int], total: int
    ) -> replay.ReplayResult:
        from tqdm import tqdm

        settings = replay.ReplaySettings(
            data_dir=self.data_dir,
            socket_path=broker.socket_path,
            service_name=self.service_name,
            tenant_id=self.tenant_id,
            rate_per_s=self.rate_per_s,
            workers=self.workers,
        )
        tasks = replay.chunks(line_counts, self.repeat)
        with tqdm(
            total=total,
            unit=" lines",
            desc="replaying",
            disable=not self.progress,
            file=sys.stderr,
        ) as bar:
            return replay.replay(settings, tasks, bar.update, self.start_method)

    def _banner(self, total: int, broker: BrokerProcess) -> str:
        topics = ", ".join(self.topics.by_class().values())
        rate = f", capped at {self.rate_per_s:,.0f} events/s" if self.rate_per_s else ""

        return (
            f"zlog demo: {total:,} lines ({self.repeat} x 4 files) from "
            f"{self.workers} workers{rate}\n"
            f"  broker  pid {broker.process.pid} on {broker.socket_path}\n"
            f"  kafka   {self.bootstrap_servers}\n"
            f"  topics  {topics}"
        )

    def _finish_topics(self) -> None:
        names = list(self.topics.by_class().values())
        if self.delete_topics:
            asyncio.run(broker_process.delete_topics(self.bootstrap_servers, names))
            print("zlog demo: topics deleted")
            return
        print(
            "zlog demo: the events stay in Kafka; read them back with any consumer, "
            f"e.g. topic {names[0]} from the earliest offset"
        )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
