"""Smoke runs of bench/sfu_capacity.py: small loads for a few seconds, through the real CLI.

They check the JSON's shape and that media really went through each SFU (packets and frames
delivered, delay measured), not the capacity figures: those need the full run described in
bench/README.md on a quiet machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen.report import percentile
from bench.loadgen.taps import count_nacks

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "sfu_capacity.py"
TARGET_KEYS = {
    "available",
    "streams",
    "publishers",
    "subscribers",
    "window_s",
    "sfu_cpu_cores",
    "sfu_core_per_stream",
    "generator_cpu_cores",
    "delivery",
    "delay_ms",
    "nack_messages",
    "nacked_packets",
    "retransmissions",
    "loss",
}


def run_bench(tmp_path: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    out = tmp_path / "result.json"
    argv = [sys.executable, str(SCRIPT), "--warmup", "0.5", "--duration", "2", "--json-out", str(out), *args]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), f"no JSON written (exit {done.returncode}):\n{done.stderr[-3000:]}"
    printed = json.loads(done.stdout)
    written = json.loads(out.read_text())
    assert printed == written
    return written


def check_forwarded(result: dict[str, Any], streams: int) -> None:
    assert TARGET_KEYS <= set(result), sorted(TARGET_KEYS - set(result))
    assert result["available"] is True
    assert result["streams"] == streams
    assert result["subscribers"] == streams
    assert result["sfu_cpu_cores"] > 0
    assert result["generator_cpu_cores"] > 0
    frames = result["delivery"]["video_frames"]
    assert frames["sent"] > 0
    assert frames["delivered"] > 0.5 * frames["sent"]


def test_count_nacks_counts_each_lost_sequence_number() -> None:
    # one generic NACK (PT 205, FMT 1): two FCIs, pid+blp 0b101 (3 packets) and pid alone (1)
    nack = bytes([0x81, 205, 0, 4]) + bytes(8) + bytes([0, 10, 0, 0b101]) + bytes([0, 40, 0, 0])
    receiver_report = bytes([0x80, 201, 0, 1]) + bytes(4)
    assert count_nacks(receiver_report + nack) == (1, 4)
    assert count_nacks(receiver_report) == (0, 0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 99) is None


def test_mediarelay_and_janus_forward_the_load(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "--target", "mediarelay", "--baseline", "janus", "--publishers", "1",
        "--subscribers-per-publisher", "2", "--audio",
    )  # fmt: skip
    assert result["config"]["publishers"] == 1
    relay = result["targets"]["mediarelay"]
    check_forwarded(relay, 2)
    assert relay["delay_ms"] is None  # re-encoded: payloads cannot be matched
    janus = result["targets"]["janus"]
    if shutil.which("janus") is None:
        assert janus["available"] is False and "apt-get install janus" in janus["reason"]
        return
    if not janus["available"]:
        pytest.skip(f"janus could not run here: {janus['reason']}")
    check_forwarded(janus, 2)
    assert janus["delivery"]["video_packets"]["mean"] > 0.9
    assert janus["delivery"]["audio_packets"]["mean"] > 0.9
    assert janus["delay_ms"]["samples"] > 100
    assert janus["delay_ms"]["p50"] is not None
    ratios = result["ratios"]["mediarelay/janus"]
    assert ratios["core_per_stream"] > 0


@pytest.mark.multiprocess
def test_classmesh_forwards_and_recovers_injected_loss(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "--target", "classmesh", "--publishers", "1", "--subscribers-per-publisher", "2",
        "--loss", "0.05", "--duration", "3",
    )  # fmt: skip
    classmesh = result["targets"]["classmesh"]
    if not classmesh["available"]:
        pytest.skip(f"the classmesh target reports itself unavailable: {classmesh['reason']}")
    check_forwarded(classmesh, 2)
    assert classmesh["delay_ms"]["samples"] > 100
    loss = classmesh["loss"]
    assert loss["dropped"] > 0
    assert classmesh["nack_messages"] > 0
    assert classmesh["retransmissions"] > 0
    assert loss["recovered"] > 0


@pytest.mark.multiprocess
def test_classmesh_node_runs_on_one_and_on_two_workers_under_the_same_load(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "--target", "classmesh", "--workers", "1,2", "--publishers", "2", "--subscribers-per-publisher", "1",
    )  # fmt: skip
    one, two = result["targets"]["classmesh"], result["targets"]["classmesh-w2"]
    if not one["available"]:
        pytest.skip(f"the classmesh target reports itself unavailable: {one['reason']}")
    for run in (one, two):
        check_forwarded(run, 2)
    assert one["workers"] == 1 and len(one["forwarding_process_cores"]) == 1 and one["front_cores"] is None
    # the two rooms went to different workers: both forwarding processes worked
    assert two["workers"] == 2 and len(two["forwarding_process_cores"]) == 2
    assert min(two["forwarding_process_cores"]) > 0 and two["front_cores"] is not None
    scaling = result["scaling"]
    assert scaling["base_workers"] == 1 and set(scaling["by_workers"]) == {"1", "2"}
    assert scaling["by_workers"]["2"]["capacity_ratio"] > 1.0
