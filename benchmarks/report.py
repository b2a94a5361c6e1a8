"""Tables, ratios, the profile summary and the chart of a benchmark run.

Pure formatting over the rows ``run.py`` collects (plus matplotlib for the
chart, imported only there: it belongs to the ``bench`` extra).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

THROUGHPUT_COLUMNS = (
    ("path", "path"),
    ("N", "workers"),
    ("events", "events"),
    ("events/s", "events_per_s"),
    ("x zlog", "throughput_vs_zlog"),
    ("call p50 µs", "caller_p50_us"),
    ("call p99 µs", "caller_p99_us"),
    ("Kafka conns", "kafka_connections"),
    ("CPU s", "cpu_s"),
    ("daemon CPU s", "daemon_cpu_s"),
    ("Kafka CPU s", "kafka_cpu_s"),
    ("RSS MB", "rss_mb"),
    ("daemon RSS MB", "daemon_rss_mb"),
)
LATENCY_COLUMNS = (
    ("path", "path"),
    ("N", "workers"),
    ("events", "events"),
    ("rate/s", "events_per_s"),
    ("e2e p50 ms", "latency_p50_ms"),
    ("e2e p99 ms", "latency_p99_ms"),
    ("call p50 µs", "caller_p50_us"),
    ("call p99 µs", "caller_p99_us"),
    ("CPU s", "cpu_s"),
    ("daemon RSS MB", "daemon_rss_mb"),
)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def progress_line(row: dict) -> str:
    label = f"{row['path']} {row['name']}, {row['workers']} workers, {row['workload']}"
    if "events_per_s" not in row:
        return f"{label}: {row.get('note', 'no result')}"
    text = f"{label} ({row['phase']}): {row['events_per_s']:,} events/s"

    return text + (f" [{row['note']}]" if "note" in row else "")


def cell(row: dict, key: str) -> str:
    if key == "path":
        return f"{row['path']}: {row['name']}"
    value = row.get(key)
    if value is None:
        return "-"
    if isinstance(value, float) and key.endswith("_vs_zlog"):
        return f"{value:.2f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"

    return str(value)


def table(rows: list[dict], columns: tuple) -> str:
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(r, k) for _, k in columns) + " |" for r in rows]

    return "\n".join(lines)


def add_ratios(rows: list[dict]) -> None:
    """Each row's events/s as a multiple of zlog's in the same setting."""
    zlog = {
        (r["workload"], r["workers"], r["phase"]): r
        for r in rows
        if r["path"] == "d" and r.get("events_per_s") and not r.get("variant")
    }
    for row in rows:
        base = zlog.get((row["workload"], row["workers"], row["phase"]))
        if base and row.get("events_per_s"):
            row["throughput_vs_zlog"] = row["events_per_s"] / base["events_per_s"]


def notes(rows: list[dict]) -> list[str]:
    return [
        f"- {row['path']} ({row['workers']} workers, {row['workload']}, "
        f"{row['phase']}): {row['note']}"
        for row in rows
        if row.get("note")
    ]


def render(results: dict) -> str:
    rows = results["rows"]
    add_ratios(rows)
    out = [f"machine: {describe_machine(results['machine'])}", ""]
    for workload in ("app", "loghub"):
        chosen = [r for r in rows if r["workload"] == workload]
        chosen = [r for r in chosen if r["phase"] == "throughput"]
        if chosen:
            out += [
                f"throughput, workload {workload}:",
                table(chosen, THROUGHPUT_COLUMNS),
            ]
            out.append("")
    paced = [r for r in rows if r["phase"] == "latency"]
    if paced:
        out += ["end-to-end latency at a fixed rate:", table(paced, LATENCY_COLUMNS)]
        out.append("")
    out += notes(rows)
    profile = results.get("profile") or {}
    if profile.get("self"):
        out += ["", render_profile(profile)]
    if results.get("emit_cost"):
        out += ["", "emit cost (benchmarks/emit_cost.py):", results["emit_cost"]]

    return "\n".join(out)


def describe_machine(machine: dict) -> str:
    return (
        f"{machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"{machine['kafka']}, Python {machine['python']}"
    )


def summarize_profile(raw_path: Path, top: int = 15) -> dict:
    """Where a py-spy raw profile spends its samples, by function."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: Counter) -> list[tuple[str, float]]:
        return [
            (name, round(100 * n / total, 1)) for name, n in counter.most_common(top)
        ]

    return {"samples": total, "self": shares(own), "inclusive": shares(inclusive)}


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    parts = Path(match["file"]).parts

    return f"{match['func']} ({'/'.join(parts[-2:])})"


def render_profile(profile: dict) -> str:
    lines = [f"broker profile (py-spy, {profile['samples']} samples):"]
    lines += ["", "| self % | function |", "|---|---|"]
    lines += [f"| {share} | {name} |" for name, share in profile["self"]]
    lines += ["", "| inclusive % | function |", "|---|---|"]
    lines += [f"| {share} | {name} |" for name, share in profile["inclusive"]]

    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    """Throughput and caller cost per path, one group of bars per worker count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')")
        return
    rows = [
        r
        for r in results["rows"]
        if r["phase"] == "throughput"
        and r["workload"] == "app"
        and "caller_p50_us" in r
    ]
    paths = sorted({r["path"] for r in rows})
    counts = sorted({r["workers"] for r in rows})
    names = {r["path"]: f"{r['path']}: {r['name']}" for r in rows}
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / max(len(counts), 1)
    for i, workers in enumerate(counts):
        by_path = {r["path"]: r for r in rows if r["workers"] == workers}
        xs = [p + (i - (len(counts) - 1) / 2) * width for p in range(len(paths))]
        throughput = [by_path.get(p, {}).get("events_per_s", 0) for p in paths]
        cost = [by_path.get(p, {}).get("caller_p50_us", 0) for p in paths]
        left.bar(xs, throughput, width, label=f"{workers} workers")
        right.bar(xs, cost, width, label=f"{workers} workers")
    for axis, title in (
        (left, "events/s end to end (in Kafka, acks=all)"),
        (right, "caller cost per event, p50 µs"),
    ):
        axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xticks(range(len(paths)), [names[p] for p in paths], rotation=20)
        axis.legend()
    figure.suptitle(f"zlog benchmark: {describe_machine(results['machine'])}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
