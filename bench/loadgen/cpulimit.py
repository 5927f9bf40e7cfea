"""Give processes a fixed CPU budget with a cgroup CPU quota ("one core per worker" on a small machine).

    with CpuLimit(0.2) as limit:
        limit.cap([pid])            # one group for these pids: together at most 0.2 core
        limit.cap_each(pids)        # a group per pid: each at most 0.2 core
        ...
        limit.throttling()          # per group: periods, throttled periods, throttled seconds

Each group is a cgroup of its own under a directory made for the run (``classmesh-bench-<our pid>``) at the top of
the hierarchy that has the ``cpu`` controller: cgroup v2 (``cpu.max``) when a cgroup2 mount offers ``cpu``, otherwise
cgroup v1's ``cpu`` hierarchy (``cpu.cfs_period_us`` / ``cpu.cfs_quota_us``). Mounts are read from
/proc/self/mountinfo. The period is 10 ms, so a capped process waits at most ~10 ms at a time, not a whole
100 ms default period. ``close()`` moves whatever is still in the groups back to where it came from and removes the
directories; pids that have exited meanwhile are fine. Needs root (or a cgroup delegated to the user).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PERIOD_US = 10_000  # 10 ms
MIN_QUOTA_US = 1_000  # the kernel refuses smaller quotas
MAX_PERIOD_US = 1_000_000  # and longer periods
RUN_PREFIX = "classmesh-bench-"


class CpuLimitUnavailable(Exception):
    """No CPU quota can be set here (not root, or no usable ``cpu`` cgroup controller); the message says why."""


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """A mounted cgroup hierarchy with the ``cpu`` controller."""

    version: int  # 1 or 2
    mountpoint: Path
    root: str  # the mount's root inside the hierarchy (as in /proc/<pid>/cgroup)

    def directory_of(self, pid: int) -> Path | None:
        """The directory of the cgroup ``pid`` is in, when it is visible under this mount."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if (self.version == 2 and controllers == "") or (self.version == 1 and "cpu" in controllers.split(",")):
                relative = os.path.relpath(path, self.root)
                if relative.startswith(".."):
                    return None
                return (self.mountpoint / relative).resolve()
        return None


def _mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(filesystem type, mount point, root, super options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            # octal escapes (\040 for a space) in paths
            mountpoint = fields[4].encode().decode("unicode_escape")
            found.append((tail[0], Path(mountpoint), fields[3], set(tail[2].split(","))))
    return found


def find_hierarchy() -> Hierarchy:
    """The hierarchy to use: cgroup v2 when it offers ``cpu``, else cgroup v1's ``cpu``."""
    mounts = _mounts()
    for fstype, mountpoint, root, _ in mounts:
        if fstype != "cgroup2":
            continue
        try:
            controllers = (mountpoint / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "cpu" in controllers:
            return Hierarchy(2, mountpoint, root)
    for fstype, mountpoint, root, options in mounts:
        if fstype == "cgroup" and "cpu" in options and (mountpoint / "cpu.cfs_quota_us").exists():
            return Hierarchy(1, mountpoint, root)
    seen = ", ".join(f"{f} at {m}" for f, m, _, _ in mounts) or "no cgroup mounts"
    raise CpuLimitUnavailable(f"no cgroup hierarchy with the cpu controller ({seen})")


def quota_for(fraction: float) -> tuple[int, int]:
    """(quota_us, period_us) for ``fraction`` of a core: a 10 ms period, stretched when the quota would be
    below the kernel's 1 ms minimum."""
    if not (isinstance(fraction, int | float) and 0.0 < fraction <= 1.0):
        raise ValueError(f"a CPU fraction must be in (0, 1], got {fraction!r}")
    period = max(PERIOD_US, math.ceil(MIN_QUOTA_US / fraction))
    if period > MAX_PERIOD_US:
        raise ValueError(f"a CPU fraction of {fraction} is below what a cgroup quota can express (0.001)")
    return round(fraction * period), period


def _read_stat(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(value)
    return values


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:  # one write() per value, as cgroupfs expects
        f.write(text)


@dataclass(slots=True)
class Group:
    """One capped cgroup and the pids put in it."""

    name: str
    path: Path
    pids: list[int]
    origins: dict[int, Path] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Throttling:
    """A group's cpu.stat figures (cumulative since the group was made)."""

    periods: int
    throttled_periods: int
    throttled_s: float

    def since(self, before: Throttling) -> dict[str, float | int | None]:
        periods = self.periods - before.periods
        throttled = self.throttled_periods - before.throttled_periods
        return {
            "periods": periods,
            "throttled_periods": throttled,
            "throttled_fraction": round(throttled / periods, 4) if periods > 0 else None,
            "throttled_s": round(self.throttled_s - before.throttled_s, 4),
        }


class CpuLimit:
    """Cap groups of processes at ``fraction`` of a core each. A context manager; ``close()`` undoes everything."""

    def __init__(self, fraction: float, hierarchy: Hierarchy | None = None) -> None:
        self.fraction = fraction
        self.quota_us, self.period_us = quota_for(fraction)
        self.hierarchy = hierarchy or find_hierarchy()
        self.groups: list[Group] = []
        parent = self.hierarchy.mountpoint
        self.path = parent / f"{RUN_PREFIX}{os.getpid()}"
        _remove_stale_runs(parent)
        try:
            if self.hierarchy.version == 2:
                self._enable_cpu(parent)
            self.path.mkdir()
            if self.hierarchy.version == 2:
                self._enable_cpu(self.path)
        except PermissionError:
            self._remove_run_dir()
            raise CpuLimitUnavailable(
                f"cannot create cgroups under {parent} (cgroup v{self.hierarchy.version}): needs root"
            ) from None
        except OSError as exc:
            self._remove_run_dir()
            hint = (
                " (cgroup v2 enables cpu only in a cgroup without processes of its own)"
                if exc.errno == errno.EBUSY
                else ""
            )
            raise CpuLimitUnavailable(f"cannot set up a cgroup under {parent}: {exc}{hint}") from None

    @property
    def version(self) -> int:
        return self.hierarchy.version

    def _enable_cpu(self, directory: Path) -> None:
        if "cpu" not in (directory / "cgroup.subtree_control").read_text().split():
            # left enabled on close: other groups may rely on it by then, and it costs nothing
            _write(directory / "cgroup.subtree_control", "+cpu")

    def cap(self, pids: Iterable[int], name: str | None = None) -> Group:
        """Put ``pids`` into one new group that may use ``fraction`` of a core in total. Pids that have already
        exited are left out of ``Group.pids``."""
        pids = list(pids)
        name = name or f"g{len(self.groups)}-{pids[0] if pids else 'empty'}"
        path = self.path / name
        path.mkdir()
        group = Group(name, path, [])
        self.groups.append(group)
        if self.version == 2:
            _write(path / "cpu.max", f"{self.quota_us} {self.period_us}")
        else:
            _write(path / "cpu.cfs_period_us", str(self.period_us))
            _write(path / "cpu.cfs_quota_us", str(self.quota_us))
        for pid in pids:
            origin = self.hierarchy.directory_of(pid)
            try:
                _write(path / "cgroup.procs", str(pid))
            except ProcessLookupError:
                continue  # exited already
            group.pids.append(pid)
            if origin is not None:
                group.origins[pid] = origin
        return group

    def cap_each(self, pids: Iterable[int], prefix: str = "pid") -> list[Group]:
        """A group per pid, each with its own ``fraction`` of a core."""
        return [self.cap([pid], f"{prefix}-{pid}") for pid in pids]

    def throttling(self) -> dict[str, Throttling]:
        """Per group name: its cpu.stat figures now."""
        out = {}
        for group in self.groups:
            stat = _read_stat(group.path / "cpu.stat")
            if self.version == 2:
                throttled_s = stat.get("throttled_usec", 0) / 1e6
            else:
                throttled_s = stat.get("throttled_time", 0) / 1e9
            out[group.name] = Throttling(stat.get("nr_periods", 0), stat.get("nr_throttled", 0), throttled_s)
        return out

    def close(self) -> None:
        """Move what is left in the groups back to where it was, remove the groups and the run's directory.
        Safe to call twice; never raises for processes that are gone."""
        for group in self.groups:
            fallback = next(iter(group.origins.values()), self.hierarchy.mountpoint)
            for _ in range(3):  # a process may fork while we move its siblings
                try:
                    left = [int(p) for p in (group.path / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not left:
                    break
                for pid in left:
                    destination = group.origins.get(pid, fallback)
                    for target in dict.fromkeys((destination, self.hierarchy.mountpoint)):
                        try:
                            _write(target / "cgroup.procs", str(pid))
                            break
                        except ProcessLookupError:
                            break
                        except OSError:
                            continue
            _rmdir(group.path)
        self.groups.clear()
        self._remove_run_dir()

    def _remove_run_dir(self) -> None:
        if self.path.exists():
            _rmdir(self.path)

    def __enter__(self) -> CpuLimit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _rmdir(path: Path, timeout: float = 1.0) -> bool:
    """Remove a cgroup directory; an exiting process may keep it busy for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _remove_stale_runs(parent: Path) -> None:
    """Remove empty run directories left by runs that died without closing (their pid is gone)."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if not entry.name.startswith(RUN_PREFIX) or not entry.is_dir():
                continue
            suffix = entry.name[len(RUN_PREFIX) :]
            if not suffix.isdigit() or Path(f"/proc/{suffix}").exists():
                continue
            for child in entry.iterdir():
                if child.is_dir():
                    _rmdir(child, timeout=0)
            _rmdir(entry, timeout=0)
