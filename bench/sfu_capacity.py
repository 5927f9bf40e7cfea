"""SFU capacity benchmark: the CPU an SFU spends per forwarded stream, next to its baselines.

    .venv/bin/python bench/sfu_capacity.py --publishers 4 --subscribers-per-publisher 16 \\
        --baseline janus,mediarelay --warmup 5 --duration 30
    .venv/bin/python bench/sfu_capacity.py --workers 1,2 --publishers 4 --subscribers-per-publisher 16

A load generator in its own processes (aiortc publishers sending a pre-encoded VP8 640x480 30 fps
~1 Mbit/s clip, optionally Opus; subscribers that count RTP without decoding) connects through each
target's own signaling: room ``i`` holds publisher ``i`` and its subscribers. After the warm-up it
measures over a fixed window: the SFU processes' CPU (user+sys from /proc), the generator's own CPU,
per-subscriber packet and frame delivery, forwarding delay (publisher send time to subscriber receive
time, both CLOCK_MONOTONIC), NACKs and retransmissions, and, with ``--loss``, how many of the packets
dropped on the way to subscribers were recovered. Prints one JSON object (see bench/README.md).

``--workers 1,2`` runs the classmesh node once per worker count on the same load (1 = one process; N > 1 = a
front and N forwarding worker processes) and reports how the load spreads over the processes; with
``--find-capacity`` it also looks, per worker count, for the largest load every subscriber still receives
>= 99.9 % of.

``--worker-cpu 0.2`` gives each forwarding process of the classmesh node a fixed budget of 0.2 core (a cgroup CPU
quota, bench/loadgen/cpulimit.py; needs root): the one-process node is capped as a whole, a node with N workers gets
N such budgets (its front, ~0.003 core, is left alone). That stands in for "one core per worker" and is how the
two-worker node's capacity is measured directly on a small machine: with the node's share of the machine fixed
well below what the generator leaves free, ``--find-capacity`` finds where the capped processes saturate rather
than where the machine does.

``--realtime 10`` runs the SFU under test (either target; all its processes and threads) under the SCHED_RR
real-time policy. On this box the generator shares the SFU's two cores, and under EEVDF even a nice -10 SFU waits
for the generator's running slices; the real-time policy is what gives it the core at once, as on a machine of
its own. The delay figures are only comparable between runs with the same setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.loadgen import cpu, cpulimit  # noqa: E402
from bench.loadgen import targets as targets_module  # noqa: E402
from bench.loadgen.clip import ensure_clip  # noqa: E402
from bench.loadgen.report import ratio, summarize  # noqa: E402
from bench.loadgen.targets import (  # noqa: E402
    JANUS_ADDRESS,
    JANUS_INTERFACE,
    TARGETS,
    ClassmeshTarget,
    TargetUnavailable,
    make_target,
)
from bench.loadgen.workers import WorkerSpec, worker_main  # noqa: E402

SUBSCRIBERS_PER_PROCESS = 16
NETNS_ENV = "CLASSMESH_BENCH_NETNS"  # set inside the namespace: the Janus interface, or "none"


def _targets(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
        if name not in TARGETS:
            raise argparse.ArgumentTypeError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return names


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError("must be a fraction in [0, 1), e.g. 0.02 for 2 %")
    return number


def _core_fraction(value: str) -> float:
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError("must be a fraction of a core in (0, 1], e.g. 0.2")
    try:
        cpulimit.quota_for(number)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _worker_counts(value: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1 or 1,2, got {value!r}") from None
    if not counts or any(c < 1 for c in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct worker counts >= 1 like 1,2, got {value!r}")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=TARGETS, default="classmesh", help="the SFU under test")
    parser.add_argument(
        "--baseline", type=_targets, default=[], help="comma list of baselines run on the same load (janus,mediarelay)"
    )
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        default=[1],
        help="classmesh node's forwarding processes; a comma list (1,2) runs the node once per count",
    )
    parser.add_argument(
        "--find-capacity",
        action="store_true",
        help="per worker count, raise subscribers per publisher by --capacity-step until delivery < 99.9 %%",
    )
    parser.add_argument(
        "--worker-cpu",
        type=_core_fraction,
        default=None,
        help="classmesh only, needs root: cap each forwarding process (the one-process node, or each worker) at "
        "this fraction of a core with a cgroup CPU quota, for the whole run",
    )
    parser.add_argument("--capacity-step", type=_positive, default=0, help="default: --subscribers-per-publisher")
    parser.add_argument("--capacity-max-streams", type=_positive, default=400)
    parser.add_argument("--publishers", type=_positive, default=4)
    parser.add_argument("--subscribers-per-publisher", type=_positive, default=16)
    parser.add_argument("--audio", action=argparse.BooleanOptionalAction, default=False, help="also send Opus audio")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after everyone receives, before measuring")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of the measuring window")
    parser.add_argument("--loss", type=_fraction, default=0.0, help="random loss between SFU and subscribers")
    parser.add_argument("--subscriber-processes", type=int, default=0, help="0 = one per 16 subscribers")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="nice value (-20..19) for the scheduler autogroups of the SFU and of each generator process "
        "(each runs in its own session); negative needs root. Default: leave them at 0",
    )
    parser.add_argument(
        "--generator-priority",
        type=int,
        default=None,
        help="nice value of the generator processes' autogroups when it should differ from --priority: a "
        "higher one lets the SFU have the CPU first, as on a machine of its own (default: --priority)",
    )
    parser.add_argument(
        "--realtime",
        type=int,
        default=None,
        metavar="PRIORITY",
        help="run the SFU under test (every process and thread of it) with the SCHED_RR real-time policy at "
        "this priority (1-99; needs root): the way to let it have a core the moment a packet comes, as on a "
        "machine of its own, which a nice value does not do under the kernel's EEVDF scheduler",
    )
    parser.add_argument(
        "--pacing",
        type=_non_negative,
        default=2.5,
        help="publishers send video at this multiple of the clip's bitrate, in 5 ms bursts, as libwebrtc's "
        "pacer does (its default factor is 2.5); 0 = aiortc's way, every frame as one burst",
    )
    parser.add_argument(
        "--netns",
        choices=["auto", "off"],
        default="auto",
        help="auto: run inside a private loopback-only network namespace when root (needed by janus)",
    )
    return parser


class _WorkerHandle:
    def __init__(self, spec: WorkerSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, spec), name=f"bench-{spec.role}", daemon=True)
        self.process.start()
        child.close()

    async def expect(self, kind: str, timeout: float) -> Any:
        conn: Connection = self.conn
        deadline = time.monotonic() + timeout
        # short polls, so that an interrupted run is not held up by a waiting thread
        while not await asyncio.to_thread(conn.poll, 0.25):
            if time.monotonic() > deadline:
                raise TimeoutError(f"a generator process sent nothing for {timeout:.0f}s (waiting for {kind})")
            if not self.process.is_alive() and not conn.poll():
                raise RuntimeError(f"a generator process exited with code {self.process.exitcode}")
        message = conn.recv()
        if message[0] == "error":
            raise RuntimeError(f"a generator process failed:\n{message[1]}")
        if message[0] != kind:
            raise RuntimeError(f"a generator process sent {message[0]!r}, expected {kind!r}")
        return message[1]

    def send(self, *command: Any) -> None:
        self.conn.send(command)

    async def close(self) -> None:
        if self.process.is_alive():
            try:
                self.send("close")
            except (BrokenPipeError, OSError):
                pass
            await asyncio.to_thread(self.process.join, 15)
        if self.process.is_alive():
            self.process.terminate()
            await asyncio.to_thread(self.process.join, 5)


async def run_target(
    name: str, args: argparse.Namespace, *, node_workers: int = 1, per: int | None = None
) -> dict[str, Any]:
    """Start ``name``, put the load on it, measure, stop it; the figures of that run."""
    target = make_target(name, janus_interface=args.janus_interface, workers=node_workers)
    roles: dict[int, str] = {}
    workers: list[_WorkerHandle] = []
    limit: cpulimit.CpuLimit | None = None
    capped: dict[str, list[int]] = {}
    publishers, per = args.publishers, per or args.subscribers_per_publisher
    streams = publishers * per
    try:
        try:
            endpoint = await target.start(publishers, args.audio)
        except TargetUnavailable as exc:
            return {"available": False, "reason": str(exc)}
        if args.worker_cpu is not None and isinstance(target, ClassmeshTarget):
            limit, capped = _cap_forwarding(target, node_workers, args.worker_cpu)
        timeout = args.connect_timeout + 10
        pub = _WorkerHandle(
            WorkerSpec(
                "publisher",
                endpoint,
                tuple(range(publishers)),
                args.audio,
                connect_timeout=args.connect_timeout,
                autogroup_nice=args.generator_priority,
                pacing=args.pacing,
            )
        )
        workers.append(pub)
        await pub.expect("ready", timeout)
        rooms = [room for room in range(publishers) for _ in range(per)]
        procs = args.subscriber_processes or max(1, math.ceil(streams / SUBSCRIBERS_PER_PROCESS))
        procs = min(procs, streams)
        subs: list[_WorkerHandle] = []
        for k in range(procs):
            spec = WorkerSpec(
                "subscriber",
                endpoint,
                tuple(rooms[k::procs]),
                args.audio,
                loss=args.loss,
                seed=args.seed * 1000 + k,
                connect_timeout=args.connect_timeout,
                autogroup_nice=args.generator_priority,
            )
            subs.append(_WorkerHandle(spec))
        workers.extend(subs)
        infos = [await w.expect("ready", timeout + 30) for w in subs]
        receiving = sum(i["receiving"] for i in infos)
        await asyncio.sleep(args.warmup)
        sfu_pids = target.pids()
        roles = target.roles() if isinstance(target, ClassmeshTarget) else {}
        gen_pids = [w.process.pid for w in workers if w.process.pid is not None]
        for w in workers:
            w.send("mark")
        t0 = time.monotonic()
        sfu_start, gen_start = cpu.sample(sfu_pids, t0), cpu.sample(gen_pids, t0)
        machine_start = cpu.machine_ticks()
        throttle_start = limit.throttling() if limit is not None else {}
        await asyncio.sleep(args.duration)
        t1 = time.monotonic()
        sfu_end, gen_end = cpu.sample(sfu_pids, t1), cpu.sample(gen_pids, t1)
        machine = cpu.machine_shares(machine_start, cpu.machine_ticks())
        throttle_end = limit.throttling() if limit is not None else {}
        await asyncio.sleep(0.5)  # packets in flight at the end of the window
        for w in workers:
            w.send("collect")
        pub_data = await pub.expect("data", 60)
        sub_data = [await w.expect("data", 60) for w in subs]
    finally:
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
        if limit is not None:
            limit.close()  # before the stop, so that the node shuts down at full speed
        await target.stop()
    sfu_cores = cpu.cores_used(sfu_start, sfu_end)
    subscribers = [s for d in sub_data for s in d["subscribers"]]
    result: dict[str, Any] = {
        "available": True,
        "streams": streams,
        "audio_streams": streams if args.audio else 0,
        "publishers": publishers,
        "subscribers": len(subscribers),
        "subscribers_receiving_at_start": receiving,
        "window_s": round(t1 - t0, 3),
        "sfu_processes": len(sfu_pids),
        "sfu_cpu_cores": round(sfu_cores, 4),
        "sfu_core_per_stream": round(sfu_cores / streams, 6),
        "generator_cpu_cores": round(cpu.cores_used(gen_start, gen_end), 4),
        "generator_processes": len(gen_pids),
        "machine_idle_fraction": machine["idle"],
        "machine_steal_fraction": machine["steal"],
    }
    if roles:
        result.update(_process_split(node_workers, roles, sfu_start, sfu_end))
    if limit is not None:
        result.update(_cap_report(limit, capped, roles, sfu_start, sfu_end, throttle_start, throttle_end))
    result.update(summarize(name, pub_data["publishers"], subscribers, t0, t1, args.audio))
    return result


def _cap_forwarding(
    target: ClassmeshTarget, node_workers: int, fraction: float
) -> tuple[cpulimit.CpuLimit, dict[str, list[int]]]:
    """Cap the node's forwarding processes at ``fraction`` of a core: the one-process node as a whole (all its
    "node" pids in one group), or each worker in a group of its own. The front is left uncapped."""
    limit = cpulimit.CpuLimit(fraction)
    try:
        roles = target.roles()
        if node_workers == 1:
            node = sorted(pid for pid, role in roles.items() if role == "node")
            groups = [limit.cap(node, "node")] if node else []
        else:
            groups = limit.cap_each(sorted(pid for pid, role in roles.items() if role == "worker"), "worker")
        capped = {g.name: g.pids for g in groups if g.pids}
        if not capped:
            raise RuntimeError(f"--worker-cpu: no forwarding process of the node to cap (roles {roles})")
    except BaseException:
        limit.close()
        raise
    return limit, capped


def _cap_report(
    limit: cpulimit.CpuLimit,
    capped: dict[str, list[int]],
    roles: dict[int, str],
    start: cpu.CpuSample,
    end: cpu.CpuSample,
    throttle_start: dict[str, cpulimit.Throttling],
    throttle_end: dict[str, cpulimit.Throttling],
) -> dict[str, Any]:
    """The quota and, per capped group, the cores it used in the window and how often it hit its quota."""
    groups = []
    for name, pids in capped.items():
        used = cpu.cores_used(cpu.CpuSample(start.wall, {p: start.seconds.get(p, 0.0) for p in pids}), end)
        entry: dict[str, Any] = {
            "group": name,
            "pids": pids,
            "role": roles.get(pids[0]),
            "cores": round(used, 4),
        }
        if name in throttle_start and name in throttle_end:
            entry.update(throttle_end[name].since(throttle_start[name]))
        groups.append(entry)
    return {
        "worker_cpu_quota": limit.fraction,
        "worker_cpu_period_us": limit.period_us,
        "worker_cpu_cgroup": f"v{limit.version}",
        "worker_cpu_capped_processes": sum(len(p) for p in capped.values()),
        "worker_cpu_groups": groups,
    }


def _process_split(
    node_workers: int, roles: dict[int, str], start: cpu.CpuSample, end: cpu.CpuSample
) -> dict[str, Any]:
    """How a classmesh node's CPU spread over its processes: one process saturates at one core (the GIL), so
    the busiest forwarding process bounds the node's capacity."""
    cores = {pid: cpu.cores_used(cpu.CpuSample(start.wall, {pid: s}), end) for pid, s in start.seconds.items()}
    forwarding = sorted((round(c, 4) for pid, c in cores.items() if roles.get(pid) in ("node", "worker")), reverse=True)
    front = round(sum(c for pid, c in cores.items() if roles.get(pid) == "front"), 4)
    return {
        "workers": node_workers,
        "forwarding_process_cores": forwarding,
        "front_cores": front if node_workers > 1 else None,
        "busiest_process_cores": forwarding[0] if forwarding else None,
    }


def _ratios(target: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    main = results.get(target, {})
    out: dict[str, Any] = {}
    for name, other in results.items():
        if name == target:
            continue
        key = f"{target}/{name}"
        if not main.get("available") or not other.get("available"):
            out[key] = None
            continue
        main_delay, other_delay = main.get("delay_ms") or {}, other.get("delay_ms") or {}
        out[key] = {
            "core_per_stream": ratio(main["sfu_core_per_stream"], other["sfu_core_per_stream"]),
            "delay_p99": ratio(main_delay.get("p99"), other_delay.get("p99")),
        }
    return out


def _delivery_min(result: dict[str, Any]) -> float | None:
    packets = (result.get("delivery") or {}).get("video_packets") or {}
    value = packets.get("min")
    return float(value) if value is not None else None


def _scaling(runs: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The same load on 1 and N workers: per-stream cost and how much of it the busiest process carries.

    capacity_ratio = busiest process of the first count / busiest process of count N: with one core per worker,
    a node saturates when its busiest forwarding process reaches one core, so that is how much more load the
    N-worker node takes at the same delivery (a model from one load; --find-capacity measures it directly)."""
    counts = [c for c, r in runs.items() if r.get("available")]
    if len(counts) < 2:
        return None
    base = runs[counts[0]]
    out: dict[str, Any] = {"base_workers": counts[0], "by_workers": {}}
    for count in counts:
        r = runs[count]
        out["by_workers"][str(count)] = {
            "streams": r["streams"],
            "sfu_core_per_stream": r["sfu_core_per_stream"],
            "busiest_process_cores": r.get("busiest_process_cores"),
            "forwarding_process_cores": r.get("forwarding_process_cores"),
            "front_cores": r.get("front_cores"),
            "delivery_min": _delivery_min(r),
            "delay_p99_ms": (r.get("delay_ms") or {}).get("p99"),
            "capacity_ratio": ratio(base.get("busiest_process_cores"), r.get("busiest_process_cores")),
            "core_per_stream_ratio": ratio(r["sfu_core_per_stream"], base["sfu_core_per_stream"]),
        }
    return out


async def _find_capacity(args: argparse.Namespace, counts: list[int]) -> dict[str, Any]:
    """Per worker count: the largest load (subscribers per publisher in steps) with delivery >= 99.9 % for every
    subscriber. The generator runs on the same machine: when it saturates first, that is what is found."""
    step = args.capacity_step or args.subscribers_per_publisher
    out: dict[str, Any] = {"threshold": 0.999, "step_subscribers_per_publisher": step, "by_workers": {}}
    for count in counts:
        per, passing, runs = step, 0, []
        while args.publishers * per <= args.capacity_max_streams:
            try:
                r = await run_target("classmesh", args, node_workers=count, per=per)
            except (RuntimeError, TimeoutError) as exc:  # the generator or the node gave up: beyond capacity
                runs.append({"streams": args.publishers * per, "error": str(exc)[-300:]})
                break
            delivered = _delivery_min(r)
            throttled = (
                [g.get("throttled_fraction") for g in r.get("worker_cpu_groups", [])] if args.worker_cpu else None
            )
            runs.append(
                {
                    "streams": r.get("streams"),
                    "delivery_min": delivered,
                    "delivery_mean": ((r.get("delivery") or {}).get("video_packets") or {}).get("mean"),
                    "subscribers_below_99_9": (r.get("delivery") or {}).get("subscribers_below_99_9"),
                    "subscribers_receiving_at_start": r.get("subscribers_receiving_at_start"),
                    "delay_p99_ms": (r.get("delay_ms") or {}).get("p99"),
                    "sfu_cpu_cores": r.get("sfu_cpu_cores"),
                    "busiest_process_cores": r.get("busiest_process_cores"),
                    "generator_cpu_cores": r.get("generator_cpu_cores"),
                    "throttled_fractions": throttled,
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                }
            )
            if not r.get("available") or delivered is None or delivered < 0.999:
                break
            passing = args.publishers * per
            per += step
        out["by_workers"][str(count)] = {"largest_passing_streams": passing, "runs": runs}
    first = out["by_workers"][str(counts[0])]["largest_passing_streams"]
    out["ratios"] = {
        f"w{c}/w{counts[0]}": ratio(out["by_workers"][str(c)]["largest_passing_streams"], first) for c in counts[1:]
    }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_clip()  # encode once, before anything is measured
    names = [args.target] + [b for b in args.baseline if b != args.target]
    counts: list[int] = args.workers
    results: dict[str, dict[str, Any]] = {}
    by_workers: dict[int, dict[str, Any]] = {}
    load_before = os.getloadavg()
    for name in names:
        if name != "classmesh":
            results[name] = await run_target(name, args)
            continue
        for k, count in enumerate(counts):
            key = "classmesh" if k == 0 else f"classmesh-w{count}"
            results[key] = by_workers[count] = await run_target(name, args, node_workers=count)
    scaling = _scaling(by_workers)
    capacity = await _find_capacity(args, counts) if args.find_capacity else None
    load_after = os.getloadavg()
    return {
        "benchmark": "sfu_capacity",
        "config": {
            "target": args.target,
            "baselines": [n for n in names if n != args.target],
            "publishers": args.publishers,
            "subscribers_per_publisher": args.subscribers_per_publisher,
            "audio": args.audio,
            "warmup_s": args.warmup,
            "priority": args.priority,
            "generator_priority": args.generator_priority,
            "sfu_realtime_priority": args.realtime,
            "pacing": args.pacing,
            "duration_s": args.duration,
            "loss": args.loss,
            "workers": counts,
            "worker_cpu": args.worker_cpu,
            "media": "VP8 640x480 30 fps ~1 Mbit/s pre-encoded" + (", Opus 48 kHz" if args.audio else ""),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # other work on the machine skews every figure: check this before trusting a run
            "loadavg_1m_before": round(load_before[0], 2),
            "loadavg_1m_after": round(load_after[0], 2),
        },
        "private_netns": args.in_netns,
        "targets": results,
        "ratios": _ratios(args.target, results),
        "scaling": scaling,
        "capacity": capacity,
    }


def _reexec_in_netns(argv: list[str]) -> int | None:
    """Run this script again inside a new network namespace: lo, plus a veth pair that connects to
    nothing, one end holding 127.0.0.2/32 for Janus. None when that is not possible here."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    setup = (
        "ip link set lo up || exit 97; "
        f"if ip link add {JANUS_INTERFACE} type veth peer name {JANUS_INTERFACE}p 2>/dev/null"
        f" && ip addr add {JANUS_ADDRESS}/32 dev {JANUS_INTERFACE}"
        f" && ip link set {JANUS_INTERFACE}p up && ip link set {JANUS_INTERFACE} up;"
        f" then export {NETNS_ENV}={JANUS_INTERFACE}; else export {NETNS_ENV}=none; fi; "
        'exec "$@"'
    )
    argv_inner = [sys.executable, str(Path(__file__).resolve()), *argv]
    env = {**os.environ, NETNS_ENV: "starting"}
    code = subprocess.call(["unshare", "--net", "--", "bash", "-c", setup, "bash", *argv_inner], env=env)
    return None if code == 97 else code


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # asyncio.run cancels the run; each target is stopped by its finally block


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.realtime is not None:
        if args.worker_cpu is not None:
            parser.error("--realtime and --worker-cpu: a cgroup CPU quota does not cap real-time tasks")
        refused = targets_module.realtime_refused(args.realtime)  # fail before anything runs
        if refused is not None:
            parser.error(f"--realtime {args.realtime}: {refused}")
    if args.worker_cpu is not None:
        if args.target != "classmesh":
            parser.error(f"--worker-cpu caps the classmesh node; the target is {args.target}")
        try:  # fail before anything is measured when no quota can be set here
            cpulimit.CpuLimit(args.worker_cpu).close()
        except cpulimit.CpuLimitUnavailable as exc:
            parser.error(f"--worker-cpu: no CPU quota possible here: {exc}")
    netns = os.environ.get(NETNS_ENV)
    if args.netns == "auto" and netns is None:
        code = _reexec_in_netns(argv)
        if code is not None:
            return code
    if args.generator_priority is None:
        args.generator_priority = args.priority
    args.janus_interface = netns if netns not in (None, "none", "starting") else None
    args.in_netns = netns is not None
    signal.signal(signal.SIGTERM, _interrupt)
    targets_module.AUTOGROUP_NICE = args.priority
    targets_module.SFU_REALTIME = args.realtime
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    main_result = report["targets"][args.target]
    return 0 if main_result.get("available") else 3


if __name__ == "__main__":
    sys.exit(main())
