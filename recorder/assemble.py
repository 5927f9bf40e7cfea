"""Building the final recording from the segments of both copies (after the class).

For every track (keyed by the node's track id, the same in both copies) and every instant the
assembler takes a copy that has it: it starts with the copy that has fewer gaps and keeps it until
that copy has a hole; then it switches to the other copy at that copy's last keyframe at or before
the hole (so the decoder always starts on a keyframe; for audio every packet is one), dropping the
packets of the first copy from that keyframe on. The selected packets are remuxed (never
transcoded) into one file whose time line starts at the media interval's start.

Coverage = 1 - (seconds of the media interval in a gap) / (seconds of the interval). A gap is
an instant no track covers (for longer than ``hole``), or a hole inside one track longer than ``hole``
seconds (audio) or 1.5 frame intervals (video, at least ``hole``); gaps are reported as (start, end)
wall times.

Packets are read into memory before muxing: about the size of the recording (a limitation noted
in docs/recording.md; a streaming two-pass version is future work).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from . import metrics
from .errors import AssemblyError
from .writer import CONTAINERS, MS, SegmentInfo, TrackSegmentInfo


@dataclass(frozen=True, slots=True)
class _P:
    wall: float
    duration: float
    keyframe: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class AssemblyResult:
    path: str
    coverage: float
    gaps: tuple[tuple[float, float], ...]
    switches: int
    tracks: dict[str, dict[str, Any]]


def _read_copy(segments: Sequence[SegmentInfo]) -> tuple[dict[str, list[_P]], dict[str, tuple[TrackSegmentInfo, Any]]]:
    packets: dict[str, list[_P]] = {}
    meta: dict[str, tuple[TrackSegmentInfo, Any]] = {}
    for seg in segments:
        with av.open(seg.path) as container:
            by_index = {t.stream_index: (tid, t) for tid, t in seg.tracks.items()}
            for tid, t in seg.tracks.items():
                if tid not in meta and t.packets:
                    ctx = container.streams[t.stream_index].codec_context
                    meta[tid] = (t, (ctx.extradata, getattr(ctx, "width", 0), getattr(ctx, "height", 0)))
            try:
                for packet in container.demux():
                    if packet.pts is None or not packet.size:
                        continue
                    tid, _ = by_index[packet.stream.index]
                    wall = seg.epoch + float(packet.pts * packet.time_base)
                    duration = float(packet.duration * packet.time_base) if packet.duration else 0.0
                    packets.setdefault(tid, []).append(_P(wall, duration, packet.is_keyframe, bytes(packet)))
            except (av.FFmpegError, EOFError):
                pass  # a salvaged segment ends where its recorder died
    for plist in packets.values():
        plist.sort(key=lambda p: p.wall)
    return packets, meta


def _tolerance(kind: str, plist: list[_P], hole: float) -> float:
    if kind == "audio" or len(plist) < 3:
        return hole
    steps = [b.wall - a.wall for a, b in itertools.pairwise(plist) if b.wall > a.wall]
    return max(hole, 1.5 * statistics.median(steps)) if steps else hole


Breaks = Callable[[float, float], bool]  # (end of a packet, start of the next) -> is the time between them lost?


class _Copy:
    """What one copy says about an interval: was it alive (any track of it has packets inside), and did its
    writer record a loss on a track there. A track that is silent while its copy is alive and lost nothing is a
    pause of the source (a browser that sent no frame for 400 ms), not a hole: the data is continuous and needs
    no keyframe to go on."""

    def __init__(self, segments: Sequence[SegmentInfo], packets: dict[str, list[_P]]) -> None:
        self.walls = sorted(p.wall for plist in packets.values() for p in plist)
        self.lost: dict[str, list[tuple[float, float]]] = {}
        for seg in segments:
            for tid, t in seg.tracks.items():
                self.lost.setdefault(tid, []).extend(t.gaps)

    def alive(self, start: float, end: float) -> bool:
        i = bisect.bisect_right(self.walls, start)
        return i < len(self.walls) and self.walls[i] < end

    def breaks(self, tid: str, tol: float) -> Breaks:
        lost = self.lost.get(tid, [])

        def broken(a_end: float, b_wall: float) -> bool:
            if b_wall - a_end <= tol:
                return False
            if not self.alive(a_end + tol / 2, b_wall - tol / 2):
                return True
            return any(ls < b_wall and le > a_end for ls, le in lost)

        return broken


def _runs_end(plist: list[_P], broken: Breaks) -> list[int]:
    """For each packet, the index of the last packet of its contiguous run."""
    ends = [0] * len(plist)
    last = len(plist) - 1
    for i in range(len(plist) - 1, -1, -1):
        if i < len(plist) - 1 and broken(plist[i].wall + plist[i].duration, plist[i + 1].wall):
            last = i
        ends[i] = last
    return ends


def _plan(copies: list[list[_P]], tol: float, breaks: list[Breaks]) -> tuple[list[_P], int]:
    """Select packets for one track from its copies (ordered by preference)."""
    runs = [_runs_end(c, b) for c, b in zip(copies, breaks, strict=True)]
    out: list[_P] = []
    switches = 0
    cur = next((i for i, c in enumerate(copies) if c), None)
    if cur is None:
        return out, 0
    # start on the copy whose first keyframe is earliest (preference breaks ties)
    firsts = [next((p.wall for p in c if p.keyframe), float("inf")) for c in copies]
    cur = min(range(len(copies)), key=lambda i: (firsts[i] - 0.0005 * (i == 0), i))
    i = next(k for k, p in enumerate(copies[cur]) if p.keyframe)
    while True:
        plist, end_idx = copies[cur], runs[cur][i]
        out.extend(plist[i : end_idx + 1])
        hole_at = plist[end_idx].wall + plist[end_idx].duration
        # where can another copy take over: its last keyframe at/before the hole, in a run past it
        best: tuple[float, int, int] | None = None
        for o, other in enumerate(copies):
            if o == cur or not other:
                continue
            for k in range(len(other) - 1, -1, -1):
                p = other[k]
                if p.wall > hole_at + tol or not p.keyframe:
                    continue
                run_end = other[runs[o][k]]
                if run_end.wall + run_end.duration > hole_at + tol and (out == [] or p.wall > out[0].wall):
                    best = (p.wall, o, k)
                break
        if best is None:
            # nobody covers the hole: resume at the earliest keyframe after it, in any copy
            later = [
                (p.wall, o, k)
                for o, other in enumerate(copies)
                for k, p in enumerate(other)
                if p.keyframe and p.wall >= hole_at
            ]
            if not later:
                return out, switches
            best = min(later)
        wall, o, k = best
        while out and out[-1].wall >= wall:
            out.pop()
        switches += o != cur
        cur, i = o, k


def _interval_union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def assemble(
    copies: Sequence[Sequence[SegmentInfo]],
    output: Path,
    media_start: float,
    media_end: float,
    *,
    container: str = "mkv",
    hole: float = 0.1,
    edge: float | None = None,
) -> AssemblyResult:
    """Merge the copies' segments into ``output``; the caller passes the interval media was sent."""
    if media_end <= media_start:
        raise AssemblyError("media interval is empty")
    read = [_read_copy(c) for c in copies]
    views = [_Copy(c, r[0]) for c, r in zip(copies, read, strict=True)]
    gap_counts = [sum(len(t.gaps) for s in c for t in s.tracks.values()) for c in copies]
    order = sorted(range(len(copies)), key=lambda i: (gap_counts[i], i))
    track_ids = sorted({tid for packets, _ in read for tid in packets})
    if not track_ids:
        raise AssemblyError("no recorded media in any copy")
    selected: dict[str, list[_P]] = {}
    gaps: list[tuple[float, float]] = []
    spans: list[tuple[float, float]] = []
    switches = 0
    info: dict[str, dict[str, Any]] = {}
    meta: dict[str, tuple[TrackSegmentInfo, Any]] = {}
    for tid in track_ids:
        lists = [read[i][0].get(tid, []) for i in order]
        for i in order:
            if tid in read[i][1]:
                meta.setdefault(tid, read[i][1][tid])
        kind = meta[tid][0].kind
        tol = _tolerance(kind, max(lists, key=len), hole)
        breaks = [views[i].breaks(tid, tol) for i in order]
        chosen, n = _plan(lists, tol, breaks)
        switches += n
        chosen = [p for p in chosen if media_start - 1 <= p.wall < media_end + 1]
        selected[tid] = chosen
        if not chosen:
            continue
        spans.append((chosen[0].wall, chosen[-1].wall + chosen[-1].duration))
        # a hole: no copy was alive there without losing this track (else the source paused)
        holes = [
            (a.wall + a.duration, b.wall)
            for a, b in itertools.pairwise(chosen)
            if all(broken(a.wall + a.duration, b.wall) for broken in breaks)
        ]
        gaps += holes
        info[tid] = {"kind": kind, "packets": len(chosen), "holes": holes}
    # instants no track covers
    # (shorter than ``hole`` is the copies' clock jitter at an edge: two copies place one frame up to ~6 ms apart)
    # ``edge``: what may be missing at the very start or end (packets in flight when a room opens or closes)
    edge = hole if edge is None else edge
    covered = _interval_union(spans)
    cursor = media_start
    for a, b in covered:
        if a - cursor > (edge if cursor == media_start else hole):
            gaps.append((cursor, min(a, media_end)))
        cursor = max(cursor, b)
    if media_end - cursor > edge:
        gaps.append((cursor, media_end))
    clipped = [(max(a, media_start), min(b, media_end)) for a, b in gaps]
    merged = _interval_union([(a, b) for a, b in clipped if b > a])
    missing = sum(b - a for a, b in merged)
    coverage = max(0.0, 1.0 - missing / (media_end - media_start))
    # the file's time line starts at the interval's start, or earlier if a track's first keyframe is earlier
    earliest = min((p[0].wall for p in selected.values() if p), default=media_start)
    _mux(output, container, selected, meta, min(media_start, earliest))
    metrics.COVERAGE.observe(coverage)
    return AssemblyResult(
        path=str(output),
        coverage=round(coverage, 6),
        gaps=tuple((round(a, 4), round(b, 4)) for a, b in merged),
        switches=switches,
        tracks=info,
    )


def _mux(
    output: Path,
    container: str,
    selected: dict[str, list[_P]],
    meta: dict[str, tuple[TrackSegmentInfo, Any]],
    origin: float,
) -> None:
    tmp = output.with_name(output.name + ".part")
    out = av.open(str(tmp), "w", format=CONTAINERS[container])
    try:
        streams = {}
        for tid, plist in selected.items():
            if not plist:
                continue
            track, (extradata, width, height) = meta[tid]
            stream: Any = out.add_stream(track.codec)
            stream.time_base = MS
            if extradata:
                stream.codec_context.extradata = extradata
            if track.kind == "video" and width:
                stream.codec_context.width, stream.codec_context.height = width, height
            streams[tid] = stream
        last: dict[str, int] = {}
        merged = heapq.merge(
            *([(p.wall, tid, n, p) for n, p in enumerate(plist)] for tid, plist in selected.items() if plist)
        )
        for _, tid, _, p in merged:
            packet = av.Packet(p.data)
            packet.stream = streams[tid]
            packet.time_base = MS
            pts = max(round((p.wall - origin) * 1000), last.get(tid, -1) + 1, 0)
            packet.pts = packet.dts = pts
            packet.duration = max(1, round(p.duration * 1000))
            packet.is_keyframe = p.keyframe
            out.mux(packet)
            last[tid] = pts
    finally:
        out.close()
    tmp.replace(output)
