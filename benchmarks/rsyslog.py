"""A private rsyslogd with omkafka: path e of the benchmark.

The harness never touches a system rsyslog. ``Rsyslog`` writes its own
configuration into a fresh directory, starts ``rsyslogd -n`` on it (its own
pid file, work directory and Unix socket, the system socket off) and stops
exactly the process it started.

Workers send syslog datagrams whose tag is the event class (``<14>audit:
{...}``); one omkafka action publishes the message text to the topic
``<prefix>.<tag>`` (a dynamic topic, so one librdkafka producer serves all
three classes) with ``acks=all`` and idempotence on, as zlog's broker does.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

PACKAGES = ("rsyslog", "rsyslog-kafka")

# Where Debian's rsyslog keeps its modules (the one file we need to see).
OMKAFKA_GLOBS = ("/usr/lib/*/rsyslog/omkafka.so", "/usr/lib/rsyslog/omkafka.so")

# rsyslogd creates its socket within a second on an idle machine.
START_TIMEOUT_S = 20.0

CONFIG = """\
global(workDirectory="{work_dir}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
module(load="omkafka")
input(type="imuxsock" Socket="{socket_path}" RateLimit.Interval="0")
main_queue(queue.size="100000")
template(name="bench_topic" type="string" string="{topic_prefix}.%programname%")
template(name="bench_value" type="string" string="%msg:2:$%")
action(
    type="omkafka"
    broker=["{bootstrap_servers}"]
    topic="bench_topic"
    dynaTopic="on"
    template="bench_value"
    resubmitOnFailure="on"
    confParam=["enable.idempotence=true"]
    topicConfParam=["acks=all"]
)
"""


def omkafka_installed() -> bool:
    return any(Path("/").glob(pattern.lstrip("/")) for pattern in OMKAFKA_GLOBS)


def ensure_installed() -> str | None:
    """Install rsyslog and omkafka when missing; the reason when that fails."""
    if shutil.which("rsyslogd") and omkafka_installed():
        return None
    if shutil.which("apt-get") is None:
        return "rsyslog with omkafka is not installed and apt-get is not available"
    done = _apt_get("install", "-y", "--no-install-recommends", *PACKAGES)
    if done.returncode != 0:
        _apt_get("update")
        done = _apt_get("install", "-y", "--no-install-recommends", *PACKAGES)
    if done.returncode == 0 and omkafka_installed():
        return None
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:]

    return f"apt-get could not install {' '.join(PACKAGES)}: {' '.join(tail)}"


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", *args], capture_output=True, text=True)


def version() -> str:
    done = subprocess.run(["rsyslogd", "-v"], capture_output=True, text=True)

    return done.stdout.split("\n", 1)[0].strip()


class Rsyslog:
    """One private rsyslogd, configured for a run's topics."""

    def __init__(self, run_dir: Path, bootstrap_servers: str, topic_prefix: str):
        self.run_dir = run_dir
        self.socket_path = run_dir / "rsyslog.sock"
        self.config_path = run_dir / "rsyslog.conf"
        self.pid_path = run_dir / "rsyslogd.pid"
        self.log_path = run_dir / "rsyslogd.log"
        self.bootstrap_servers = bootstrap_servers
        self.topic_prefix = topic_prefix
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        work_dir = self.run_dir / "work"
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            CONFIG.format(
                work_dir=work_dir,
                socket_path=self.socket_path,
                topic_prefix=self.topic_prefix,
                bootstrap_servers=self.bootstrap_servers,
            )
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "rsyslogd",
                    "-n",
                    "-f",
                    str(self.config_path),
                    "-i",
                    str(self.pid_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not start: see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
