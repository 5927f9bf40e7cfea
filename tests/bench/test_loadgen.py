"""The load generator's own parts that shape what bench/sfu_capacity.py measures: the kernel's receive stamp,
the browser-like pacer, the spread of the publishers' keyframes, and the SFU's real-time scheduling."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest

from bench.loadgen import targets
from bench.loadgen.clip import EncodedFrame, EncodedStream
from bench.loadgen.taps import Pacer, kernel_arrival
from bench.loadgen.tracks import spread_start


def test_the_kernel_stamp_is_when_the_datagram_arrived_not_when_it_was_read() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        assert kernel_arrival(receiver.fileno()) is None  # nothing read yet
        # the first ask turns stamping on, which the kernel does a moment later (a deferred static key):
        # until then a datagram carries no stamp and the answer is the time of the ask
        sender.sendto(b"warm-up", receiver.getsockname())
        receiver.recv(2048)
        time.sleep(0.1)
        for _ in range(3):
            sent = time.monotonic()
            sender.sendto(b"x" * 100, receiver.getsockname())
            time.sleep(0.05)  # the reader is late by 50 ms
            receiver.recv(2048)
            read = time.monotonic()
            stamp = kernel_arrival(receiver.fileno())
            assert stamp is not None
            assert sent - 0.001 <= stamp <= sent + 0.02, (sent, stamp)
            assert read - stamp >= 0.045
    finally:
        receiver.close()
        sender.close()


async def test_the_pacer_spreads_a_keyframe_at_its_rate_and_lets_small_frames_through() -> None:
    pacer = Pacer(bitrate=1_000_000, factor=2.5)  # 312.5 kB/s
    began = time.monotonic()
    for _ in range(3):  # a 3.6 kB delta frame: ~11.5 ms of budget, first 5 ms of it at once
        await pacer.wait(1200)
    assert time.monotonic() - began < 0.02
    await asyncio.sleep(0.05)
    began = time.monotonic()
    times = []
    for _ in range(20):  # a 24 kB keyframe: 77 ms at the pacing rate
        await pacer.wait(1200)
        times.append(time.monotonic() - began)
    assert times[1] < 0.005  # the first burst goes out at once
    assert 0.065 <= times[-1] <= 0.2, times
    assert sorted(times) == times


def _stream(frames: int, keyframe_every: int) -> EncodedStream:
    return EncodedStream(
        kind="video",
        time_base=Fraction(1, 30),
        duration=frames,
        frames=tuple(EncodedFrame(b"", i, i % keyframe_every == 0) for i in range(frames)),
    )


def test_publishers_start_their_loops_with_keyframes_evenly_apart() -> None:
    stream = _stream(600, 60)
    assert [spread_start(stream, k, 4) for k in range(4)] == [0, 15, 30, 45]
    assert spread_start(stream, 0, 1) == 0
    # a clip with a single keyframe spreads over the whole loop
    assert [spread_start(_stream(90, 1000), k, 3) for k in range(3)] == [0, 30, 60]


@pytest.mark.skipif(targets.realtime_refused(1) is not None, reason="SCHED_RR needs root (CAP_SYS_NICE)")
def test_only_the_sfu_runs_real_time_and_what_it_starts_inherits_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "SFU_REALTIME", 7)
    target = targets._ProcessTarget()
    sfu = target._spawn(["sh", "-c", "sleep 30 & echo $!; wait"], label="sfu", sfu=True)
    other = target._spawn(["sleep", "30"], label="other")
    try:
        deadline = time.monotonic() + 5
        log = Path(target._dir) / "sfu.log"
        while not log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.01)
        child = int(log.read_text())
        for pid in (sfu.pid, child):
            assert os.sched_getscheduler(pid) == os.SCHED_RR
            assert os.sched_getparam(pid).sched_priority == 7
        assert os.sched_getscheduler(other.pid) == os.SCHED_OTHER
        assert target.pids()[0] == sfu.pid
    finally:
        asyncio.run(target.stop())


def test_the_bench_refuses_a_realtime_priority_it_cannot_use() -> None:
    script = Path(__file__).resolve().parents[2] / "bench" / "sfu_capacity.py"
    for extra in (["--realtime", "0"], ["--realtime", "5", "--worker-cpu", "0.2"]):
        done = subprocess.run([sys.executable, str(script), *extra], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "--realtime" in done.stderr
