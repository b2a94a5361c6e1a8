"""Five ways to get Python workers' events into Kafka, side by side.

``make bench`` runs this. Against one Kafka, for each path (``worker.py``
describes them) and each worker count, N worker processes log M events
each, and the harness measures:

- events/s end to end: from the moment every worker starts until Kafka's end
  offsets hold every event (acks=all everywhere, so every replica has it);
- caller cost: what the log call costs the application, p50 and p99;
- end-to-end latency at a fixed moderate rate (10,000 events/s over all
  workers): Kafka's append time minus the time the caller logged the event;
- Kafka connections held (peak, sampled), CPU seconds of the workers and of
  the daemon between them and Kafka (zlog's broker, rsyslogd), Kafka's own
  CPU seconds, and peak RSS.

Paths a and b wait for Kafka on every event, so they get a smaller M and no
latency run: they cannot reach 10,000 events/s. Results go to
``benchmarks/results/`` as JSON and to ``benchmarks/bench.png`` as a chart.
Usage::

    python benchmarks/run.py [--quick] [--workers 1,8,64] [--paths a,b,c,d,e]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import measure
import report
import rsyslog

from zlog.endpoint import request_status

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
EMIT_COST = HERE / "emit_cost.py"
RESULTS_DIR = HERE / "results"
CHART_PATH = HERE / "bench.png"

PATH_NAMES = {
    "a": "producer per call",
    "b": "send_and_wait, linger 20 ms",
    "c": "send() + flush",
    "d": "zlog",
    "e": "rsyslog + omkafka",
}
# Paths that await Kafka per event: smaller M, no run at the fixed rate.
SLOW_PATHS = ("a", "b")

# A cold worker imports aiokafka or structlog in about half a second; 64 of
# them on two cores need a while.
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str
    paths: tuple[str, ...]
    workers: tuple[int, ...]
    events: int
    slow_events: dict[str, int]
    loghub_workers: int
    loghub_events: int  # per worker: 8 x 1000 is the 8,000 loghub lines once
    latency_rate_per_s: int
    latency_s: float
    deliver_timeout_s: float
    profile: bool
    emit_cost_events: int

    @property
    def kafka_port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    def events_for(self, path: str) -> int:
        return self.slow_events.get(path, self.events)


@dataclass(frozen=True)
class Case:
    """One run: a path, a worker count, a workload, paced or not."""

    path: str
    workers: int
    workload: str
    events_per_worker: int
    rate_per_s: float = 0.0  # over all workers; 0 is as fast as they go
    zlog_ack: bool = True  # zlog waits for the ack of audit and security events

    @property
    def phase(self) -> str:
        return "latency" if self.rate_per_s else "throughput"

    @property
    def total(self) -> int:
        return self.workers * self.events_per_worker


@dataclass
class Daemon:
    """The process between the workers and Kafka (none for paths a to c)."""

    socket_path: str = ""
    pid: int | None = None
    stop: object = None
    version: str = ""


class ZlogBroker:
    """``zlog broker`` on a private socket, spool and topics."""

    def __init__(self, run_dir: Path, bootstrap_servers: str, prefix: str) -> None:
        self.socket_path = run_dir / "broker.sock"
        self.log_path = run_dir / "broker.log"
        self.command = [
            sys.executable,
            "-m",
            "zlog",
            "broker",
            "--socket",
            str(self.socket_path),
            "--bootstrap-servers",
            bootstrap_servers,
            "--spool-path",
            str(run_dir / "spool.db"),
            *[f"--{name}-topic={prefix}.{name}" for name in ("application", "audit")],
            f"--security-topic={prefix}.security",
        ]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while not answers_status(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"zlog broker did not start: see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def answers_status(socket_path: Path) -> bool:
    return socket_path.exists() and broker_status(socket_path) is not None


def broker_status(socket_path: Path, timeout_s: float = 1.0) -> dict | None:
    """The broker's status document, or None when it does not answer."""
    body = request_status(socket_path, timeout_s)

    return None if body is None else json.loads(body)


def broker_counts(status: dict | None) -> dict:
    """What the broker says it received and did with it, for the JSON results."""
    if status is None:
        return {"status": "no answer"}
    keys = ("totals", "emitter_drops_total", "sequence", "bad_frames", "spool")

    return {key: status.get(key) for key in keys}


class Harness:
    """Runs cases against one Kafka and collects their rows."""

    def __init__(self, settings: Settings, run_dir: Path) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.run_id = uuid.uuid4().hex[:8]
        self.probe = measure.KafkaProbe(settings.bootstrap_servers)
        self.kafka = measure.kafka_process(settings.kafka_port)
        self.rsyslog_problem: str | None = None
        self.rows: list[dict] = []
        self.profile: dict = {}

    async def run(self) -> None:
        await self.probe.start()
        try:
            if "e" in self.settings.paths:
                self.rsyslog_problem = rsyslog.ensure_installed()
            for case in self.cases():
                self.rows.append(await self.run_case(case))
                print(report.progress_line(self.rows[-1]), flush=True)
            if self.settings.profile and "d" in self.settings.paths:
                self.profile = await self.profile_broker()
        finally:
            await self.probe.stop()

    def cases(self) -> list[Case]:
        s = self.settings
        # Past 8 workers the events of a run stay those of 8 workers, so 64
        # workers cost the same time as 8 and do not swamp a shared Kafka.
        cases = [
            Case(path, n, "app", s.events_for(path) * min(n, 8) // n)
            for n in s.workers
            for path in s.paths
        ]
        replay = min(s.loghub_events, s.events)
        cases += [
            Case(path, s.loghub_workers, "loghub", min(replay, s.events_for(path)))
            for path in s.paths
        ]
        # The other paths never wait for Kafka on audit and security events;
        # zlog does by default. This row shows zlog without that wait.
        if "d" in s.paths:
            cases.append(Case("d", s.loghub_workers, "loghub", replay, zlog_ack=False))
        latency_workers = s.loghub_workers
        per_worker = int(s.latency_rate_per_s * s.latency_s / latency_workers)
        cases += [
            Case(path, latency_workers, "app", per_worker, s.latency_rate_per_s)
            for path in s.paths
            if path not in SLOW_PATHS
        ]

        return cases

    async def run_case(self, case: Case, profiler=None) -> dict:
        row = {
            "path": case.path,
            "name": PATH_NAMES[case.path],
            "workers": case.workers,
            "workload": case.workload,
            "phase": case.phase,
            "events": case.total,
        }
        if not case.zlog_ack:
            row.update(variant="no acks", name="zlog, audit/security not acked")
        if case.path == "e" and self.rsyslog_problem:
            return {**row, "note": self.rsyslog_problem}
        prefix = f"bench.{self.run_id}.{case.path}{case.workers}{case.workload}"
        prefix += "-paced" if case.rate_per_s else ""
        prefix += "" if case.zlog_ack else "-noack"
        case_dir = Path(tempfile.mkdtemp(prefix=f"{case.path}-", dir=self.run_dir))
        daemon = Daemon()
        try:
            await self.probe.create_topics(prefix)
            daemon = self.start_daemon(case.path, case_dir, prefix)
            row.update(await self.drive(case, case_dir, prefix, daemon, profiler))
        except Exception as exc:  # one failed case must not hide the others
            row["note"] = f"failed: {exc}"
        finally:
            if daemon.stop is not None:
                daemon.stop()
        if daemon.version:
            row["daemon"] = daemon.version

        return row

    def start_daemon(self, path: str, case_dir: Path, prefix: str) -> Daemon:
        bootstrap = self.settings.bootstrap_servers
        if path == "d":
            broker = ZlogBroker(case_dir, bootstrap, prefix)
            broker.start()
            return Daemon(str(broker.socket_path), broker.process.pid, broker.stop)
        if path == "e":
            syslog = rsyslog.Rsyslog(case_dir, bootstrap, prefix)
            syslog.start()
            return Daemon(
                str(syslog.socket_path),
                syslog.process.pid,
                syslog.stop,
                rsyslog.version(),
            )

        return Daemon()

    async def drive(
        self, case: Case, case_dir: Path, prefix: str, daemon: Daemon, profiler
    ) -> dict:
        workers = await self.spawn_workers(case, case_dir, prefix, daemon)
        try:
            return await self.measure(case, case_dir, prefix, daemon, profiler, workers)
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()

    async def measure(
        self, case: Case, case_dir: Path, prefix: str, daemon: Daemon, profiler, workers
    ) -> dict:
        watch = measure.Watch(
            self.settings.kafka_port, daemon.pid, [w.pid for w in workers]
        )
        # Connections are opened before the start; see them even in short runs.
        watch.sample()
        watch.start()
        kafka_cpu_start_s = measure.cpu_s(self.kafka) if self.kafka else 0.0
        done = asyncio.Event()
        sampler = asyncio.create_task(watch.sample_until(done))
        spy = profiler(daemon.pid) if profiler else None
        started = time.perf_counter()
        for worker in workers:
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        delivered = await self.wait_delivered(prefix, case.total)
        elapsed_s = time.perf_counter() - started
        status = broker_status(Path(daemon.socket_path), 10) if case.path == "d" else 0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        done.set()
        await sampler
        watch.finish()
        kafka_cpu_s = measure.cpu_s(self.kafka) - kafka_cpu_start_s if self.kafka else 0
        summaries = [await finished(w) for w in workers]
        result = self.summarize(case, case_dir, summaries, watch, elapsed_s, delivered)
        result.update(delivered=delivered, kafka_cpu_s=round(kafka_cpu_s, 2))
        if status != 0:
            result["broker"] = broker_counts(status)
        if delivered < case.total:
            result["note"] = f"timed out: {delivered} of {case.total} in Kafka"
        if case.rate_per_s:
            result.update(await self.latency(prefix, delivered))

        return result

    async def spawn_workers(
        self, case: Case, case_dir: Path, prefix: str, daemon: Daemon
    ) -> list[asyncio.subprocess.Process]:
        workers = []
        for index in range(case.workers):
            spec = {
                "path": case.path,
                "workload": case.workload,
                "worker": index,
                "workers": case.workers,
                "events": case.events_per_worker,
                "rate_per_s": case.rate_per_s / case.workers,
                "zlog_ack": case.zlog_ack,
                "bootstrap_servers": self.settings.bootstrap_servers,
                "topic_prefix": prefix,
                "socket_path": daemon.socket_path,
                "samples_path": str(case_dir / f"samples-{index}.bin"),
            }
            with (case_dir / f"worker-{index}.log").open("wb") as log:
                workers.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        str(WORKER),
                        json.dumps(spec),
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=log,
                    )
                )
        for worker in workers:
            line = await asyncio.wait_for(worker.stdout.readline(), READY_TIMEOUT_S)
            if line.strip() != b"ready":
                raise RuntimeError(f"a worker did not start: see {case_dir}")

        return workers

    async def wait_delivered(self, prefix: str, total: int) -> int:
        deadline = time.monotonic() + self.settings.deliver_timeout_s
        count = 0
        while time.monotonic() < deadline:
            count = await self.probe.count(prefix)
            if count >= total:
                break
            await asyncio.sleep(0.05)

        return count

    def summarize(
        self,
        case: Case,
        case_dir: Path,
        summaries: list[dict],
        watch: measure.Watch,
        elapsed_s: float,
        delivered: int,
    ) -> dict:
        samples = array("q")
        for index in range(case.workers):
            path = case_dir / f"samples-{index}.bin"
            samples.frombytes(path.read_bytes())
        ordered = sorted(samples)
        dropped: dict[str, int] = {}
        for summary in summaries:
            for reason, count in summary.get("dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + count
        workers_cpu_s = sum(s["cpu_s"] for s in summaries)
        workers_rss = sum(s["max_rss_kb"] for s in summaries) * 1024

        return {
            "elapsed_s": round(elapsed_s, 3),
            "events_per_s": round(delivered / elapsed_s),
            "caller_p50_us": round(measure.percentile(ordered, 0.50) / 1000, 1),
            "caller_p99_us": round(measure.percentile(ordered, 0.99) / 1000, 1),
            "kafka_connections": watch.peak_connections,
            "cpu_s": round(workers_cpu_s + watch.daemon_cpu_s, 2),
            "rss_mb": round((workers_rss + watch.daemon_peak_rss_bytes) / 2**20),
            **(self.daemon_figures(watch) if watch.daemon_pid else {}),
            "dropped": dropped,
        }

    @staticmethod
    def daemon_figures(watch: measure.Watch) -> dict:
        return {
            "daemon_cpu_s": round(watch.daemon_cpu_s, 2),
            "daemon_rss_mb": round(watch.daemon_peak_rss_bytes / 2**20, 1),
            "daemon_kafka_connections": watch.daemon_connections,
        }

    async def latency(self, prefix: str, delivered: int) -> dict:
        latencies = await self.probe.latencies_ms(prefix, delivered, 60)

        return {
            "latency_p50_ms": round(measure.percentile(latencies, 0.50), 1),
            "latency_p99_ms": round(measure.percentile(latencies, 0.99), 1),
            "latency_samples": len(latencies),
        }

    async def profile_broker(self) -> dict:
        """Run zlog's 8-worker case again under py-spy and sum where time goes."""
        raw_path = RESULTS_DIR / f"broker-profile-{self.run_id}.txt"

        def start_spy(pid: int) -> subprocess.Popen:
            spy = Path(sys.executable).with_name("py-spy")
            command = [str(spy), "record", "--format", "raw", "--rate", "200"]
            command += ["--pid", str(pid), "-o", str(raw_path)]
            return subprocess.Popen(command, stderr=subprocess.DEVNULL)

        case = Case("d", self.settings.loghub_workers, "app", self.settings.events)
        row = await self.run_case(case, profiler=start_spy)
        if not raw_path.exists():
            return {"note": "py-spy wrote no profile (is it installed?)"}

        return {"row": row, **report.summarize_profile(raw_path), "raw": raw_path.name}


def emit_cost(events: int) -> str:
    """The client engineer's emit-cost table, when that benchmark exists."""
    if not EMIT_COST.exists():
        return ""
    done = subprocess.run(
        [sys.executable, str(EMIT_COST), "--events", str(events)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    return (
        done.stdout if done.returncode == 0 else f"emit_cost.py failed:\n{done.stderr}"
    )


async def finished(worker: asyncio.subprocess.Process) -> dict:
    out, _ = await asyncio.wait_for(worker.communicate(), 600)
    lines = out.decode().strip().splitlines()
    if worker.returncode != 0 or not lines:
        raise RuntimeError(f"a worker exited with {worker.returncode}")

    return json.loads(lines[-1])


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--paths", default="a,b,c,d,e")
    parser.add_argument("--workers", default="8", help="worker counts, e.g. 1,8,64")
    parser.add_argument("--events", type=int, help="M for paths c, d and e")
    parser.add_argument("--quick", action="store_true", help="a run of ~2 minutes")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick

    return Settings(
        bootstrap_servers=args.bootstrap_servers,
        paths=tuple(args.paths.split(",")),
        workers=tuple(int(n) for n in args.workers.split(",")),
        events=args.events or (5_000 if quick else 20_000),
        slow_events={"a": 10, "b": 50} if quick else {"a": 40, "b": 200},
        loghub_workers=8,
        loghub_events=1000 if quick else 2000,
        latency_rate_per_s=10_000,
        latency_s=2.0 if quick else 5.0,
        deliver_timeout_s=60.0 if quick else 180.0,
        profile=not args.no_profile,
        emit_cost_events=10_000 if quick else 50_000,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    RESULTS_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zlog-bench-") as run_dir:
        harness = Harness(settings, Path(run_dir))
        asyncio.run(harness.run())
    emit_table = emit_cost(settings.emit_cost_events)
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": measure.machine(harness.kafka),
        "settings": {k: v for k, v in settings.__dict__.items()},
        "rows": harness.rows,
        "profile": harness.profile,
        "emit_cost": emit_table,
        "duration_s": round(time.monotonic() - started),
    }
    out = RESULTS_DIR / f"bench-{harness.run_id}.json"
    out.write_text(json.dumps(results, indent=2))
    print(report.render(results))
    report.chart(results, CHART_PATH)
    print(f"\nresults: {out.relative_to(HERE.parent)}; chart: bench.png")

    return 0


if __name__ == "__main__":
    sys.exit(main())
