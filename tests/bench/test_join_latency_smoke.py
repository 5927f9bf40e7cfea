"""A smoke run of bench/join_latency.py, on both of its stacks (classmesh processes on redis, and everything in
the bench's process): two Chromium joins into a room where a Chromium page publishes its fake camera. It checks
that the bench still measures a first remote frame, its baseline and its timeline, not the figures (those are
`make bench` on a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@pytest.mark.parametrize("stack", ["processes", "in-process"])
def test_join_latency_bench_measures_a_first_remote_frame(stack: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "join_latency.py"), "--joins", "2", "--stack", stack],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["joins"] == 2 and result["node"]["plis_sent"] >= 1
    frames = result["first_remote_frame_ms"]["all"]
    assert len(frames) == 2 and all(0 < ms < 20_000 for ms in frames), result
    assert result["baseline_first_local_frame_ms"]["p50"] > 0, result
    timeline = result["timeline_p50_ms"]
    assert {"page parsed", "subscriber offer applied"} <= set(timeline), timeline
