"""The demo's replay plan: chunks, expected events and pacing."""

from __future__ import annotations

import time
from pathlib import Path

from zlog.demo.replay import _Pacer, chunks, expected_events, read_sources

DATA_DIR = Path(__file__).parents[2] / "examples" / "data" / "loghub"


def test_chunks_cover_every_line_once_per_repeat() -> None:
    tasks = chunks({"a.log": 600, "b.log": 10}, repeat=2, chunk_lines=250)
    covered = sorted(
        (t.source_file, t.repeat, n) for t in tasks for n in range(t.start, t.stop)
    )

    assert len(covered) == len(set(covered)) == 2 * 610
    assert {t.repeat for t in tasks} == {0, 1}
    assert max(t.stop - t.start for t in tasks) == 250


def test_expected_events_name_every_line_of_every_repeat() -> None:
    expected = expected_events(read_sources(DATA_DIR), repeat=2)

    assert len(expected) == 16_000
    assert expected["OpenSSH_2k.log", 956, 1] == "security"
    assert expected["Linux_2k.log", 14, 0] == "audit"
    assert expected["HDFS_2k.log", 2000, 1] == "application"


def test_pacer_caps_the_rate() -> None:
    pacer = _Pacer(rate_per_s=200.0)
    started = time.monotonic()
    for _ in range(21):
        pacer.wait()

    assert time.monotonic() - started >= 0.095


def test_pacer_without_a_rate_never_sleeps() -> None:
    pacer = _Pacer(rate_per_s=0.0)
    started = time.monotonic()
    for _ in range(10_000):
        pacer.wait()

    assert time.monotonic() - started < 0.5
