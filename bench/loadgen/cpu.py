"""CPU time (user + system) of processes, read from /proc/<pid>/stat."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of every thread of ``pid`` (0.0 once it has exited)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # after the name: state(3) ppid(4) ... utime(14) stime(15), i.e. indexes 11 and 12 here
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, found by walking parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@dataclass(frozen=True, slots=True)
class CpuSample:
    wall: float
    seconds: dict[int, float]


def sample(pids: list[int], wall: float) -> CpuSample:
    return CpuSample(wall, {pid: cpu_seconds(pid) for pid in pids})


def cores_used(start: CpuSample, end: CpuSample) -> float:
    """Average cores used by the processes of ``start`` between the two samples."""
    elapsed = end.wall - start.wall
    if elapsed <= 0:
        return 0.0
    used = sum(max(0.0, end.seconds.get(pid, 0.0) - before) for pid, before in start.seconds.items())
    return used / elapsed


def machine_ticks() -> dict[str, int]:
    """The machine's CPU time by state, summed over its CPUs (the ``cpu`` line of /proc/stat), in ticks."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {name: int(value) for name, value in zip(names, fields, strict=False)}


def machine_shares(start: dict[str, int], end: dict[str, int]) -> dict[str, float]:
    """Fractions of the machine's CPU time between two :func:`machine_ticks` that were idle and stolen.

    ``steal`` is time a virtual machine's CPUs were ready to run but the hypervisor ran something else: a
    packet that arrives then waits for it whatever the SFU does, so it bounds what a delay tail can show."""
    total = sum(end.values()) - sum(start.values())
    if total <= 0:
        return {"idle": 0.0, "steal": 0.0}
    return {
        "idle": round((end["idle"] - start["idle"]) / total, 4),
        "steal": round((end.get("steal", 0) - start.get("steal", 0)) / total, 4),
    }
