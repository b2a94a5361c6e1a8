"""End-to-end throughput of ``zlog broker``: N raw DEALER senders into Kafka.

Starts a broker on a private socket and fresh topics, runs the test suite's
stand-in emitter (tests/broker/sender.py) in N processes, and reports how long
Kafka took to acknowledge every event, with the broker's CPU time. Usage::

    python benchmarks/broker_throughput.py [--procs 8] [--count 50000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from zlog.endpoint import request_status as broker_answers

ROOT = Path(__file__).resolve().parent.parent

SENDER = ROOT / "tests" / "broker" / "sender.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--count", type=int, default=50_000)
    args = parser.parse_args()
    total = args.procs * args.count
    tag = uuid.uuid4().hex[:8]
    socket_path = Path(tempfile.mkdtemp(prefix="zl-", dir="/tmp")) / "b.sock"
    broker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zlog",
            "broker",
            "--socket",
            str(socket_path),
            "--bootstrap-servers",
            args.bootstrap_servers,
            "--application-topic",
            f"bench.{tag}.app",
            "--audit-topic",
            f"bench.{tag}.audit",
            "--security-topic",
            f"bench.{tag}.sec",
        ],
        stderr=subprocess.DEVNULL,
    )
    while not (socket_path.exists() and broker_answers(socket_path)):
        time.sleep(0.1)
    process = psutil.Process(broker.pid)
    cpu_before = process.cpu_times()
    threads_before = {t.id: t.user_time + t.system_time for t in process.threads()}
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [sys.executable, str(SENDER), str(socket_path), str(p), str(args.count)]
        )
        for p in range(args.procs)
    ]
    published = 0
    while published < total:
        time.sleep(0.05)
        published = json.loads(broker_answers(socket_path, 10))["totals"]["published"]
    elapsed_s = time.perf_counter() - started
    cpu_after = process.cpu_times()
    thread_cpu_s = sorted(
        (t.user_time + t.system_time - threads_before.get(t.id, 0.0), t.id)
        for t in process.threads()
    )
    main_thread_s = next((s for s, tid in thread_cpu_s if tid == broker.pid), 0.0)
    cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    for sender in senders:
        sender.wait()
    broker.terminate()
    broker.wait()
    print(
        f"{total} events from {args.procs} processes in {elapsed_s:.2f} s: "
        f"{total / elapsed_s:,.0f} events/s; broker CPU {cpu_s:.2f} s "
        f"({cpu_s / total * 1e6:.1f} us per event; the event loop's thread "
        f"{main_thread_s / total * 1e6:.1f} us, ZeroMQ's and the others' "
        f"{(cpu_s - main_thread_s) / total * 1e6:.1f} us)"
    )


if __name__ == "__main__":
    main()
