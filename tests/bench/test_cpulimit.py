"""bench/loadgen/cpulimit.py: a cgroup CPU quota really holds a busy process to its fraction of a core, and the
groups are gone afterwards. Needs root and a cgroup hierarchy with the cpu controller (skipped otherwise)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench.loadgen import cpu
from bench.loadgen.cpulimit import CpuLimit, CpuLimitUnavailable, quota_for


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def _limit(fraction: float) -> CpuLimit:
    try:
        return CpuLimit(fraction)
    except CpuLimitUnavailable as exc:
        pytest.skip(f"no CPU quota possible here: {exc}")


def test_a_capped_busy_loop_uses_its_fraction_of_a_core(busy: subprocess.Popen[bytes]) -> None:
    limit = _limit(0.2)
    with limit:
        group = limit.cap([busy.pid], "busy")
        assert group.pids == [busy.pid]
        time.sleep(0.2)  # let the first periods pass
        start = limit.throttling()["busy"]
        before = cpu.sample([busy.pid], time.monotonic())
        time.sleep(1.5)
        used = cpu.cores_used(before, cpu.sample([busy.pid], time.monotonic()))
        throttled = limit.throttling()["busy"].since(start)
        paths = [limit.path, group.path]
        assert all(p.is_dir() for p in paths)
    assert 0.1 <= used <= 0.3, used
    assert (throttled["throttled_periods"] or 0) > 0, throttled
    assert not any(p.exists() for p in paths)
    assert busy.poll() is None  # moved back out, still running
    limit.close()  # twice is fine


def test_each_pid_gets_its_own_budget_and_exited_pids_are_fine(busy: subprocess.Popen[bytes]) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    limit = _limit(0.5)
    with limit:
        groups = limit.cap_each([busy.pid, gone.pid], "p")
        assert [g.pids for g in groups] == [[busy.pid], []]
        busy.kill()
        busy.wait()
    assert not limit.path.exists()


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), 0.0005])
def test_an_invalid_fraction_is_rejected(fraction: float) -> None:
    with pytest.raises(ValueError):
        quota_for(fraction)
    with pytest.raises(ValueError):
        CpuLimit(fraction)


def test_the_period_is_10_ms_and_stretches_for_small_fractions() -> None:
    assert quota_for(0.2) == (2000, 10_000)
    assert quota_for(1.0) == (10_000, 10_000)
    assert quota_for(0.05) == (1000, 20_000)
