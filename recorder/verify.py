"""Verifying a recording: decode it end to end with PyAV and check what a viewer would notice.

``verify_file`` decodes every frame of every stream (the only place the recorder decodes, and
only after the class), and reports per stream its frame count, first and last instant and decode
errors; the file's media duration; and A/V sync as the offsets in milliseconds between where the
video and the audio start and end. ``VerifyReport.ok`` is true when every expected track kind is
present, nothing failed to decode and the duration is within ``tolerance`` of the expected one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from .errors import VerificationError


def _any(x: object) -> Any:
    return x


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamReport:
    index: int
    kind: str
    codec: str
    frames: int
    start: float | None  # seconds in the file's time line
    end: float | None
    decode_errors: int
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class VerifyReport:
    path: str
    ok: bool
    duration: float
    expected_duration: float | None
    streams: tuple[StreamReport, ...]
    av_start_offset_ms: float | None  # video start minus audio start
    av_end_offset_ms: float | None  # video end minus audio end
    problems: tuple[str, ...] = field(default_factory=tuple)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.streams:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out


def _decode_stream(path: Path, index: int) -> StreamReport:
    with av.open(str(path)) as container:
        stream = container.streams[index]
        kind = stream.type
        codec = stream.codec_context.name
        frames = errors = 0
        start: float | None = None
        end: float | None = None
        width = height = 0
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None:
                decoded = []
                try:
                    decoded = list(packet.decode())
                except av.FFmpegError:
                    errors += 1
            else:
                try:
                    decoded = list(packet.decode())
                except av.FFmpegError as exc:
                    errors += 1
                    logger.debug("file=%s stream=%d decode error: %s", path, index, exc)
                    continue
            for frame in decoded:
                frame = _any(frame)
                frames += 1
                if frame.pts is None or frame.time_base is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if isinstance(frame, av.AudioFrame):
                    duration = frame.samples / frame.sample_rate
                else:
                    width, height = frame.width, frame.height
                    duration = float(packet.duration * packet.time_base) if packet.duration else 0.0
                start = t if start is None else min(start, t)
                end = t + duration if end is None else max(end, t + duration)
    return StreamReport(index, kind, codec, frames, start, end, errors, width, height)


def verify_file(
    path: Path,
    *,
    expected_duration: float | None = None,
    expected_tracks: Mapping[str, int] | None = None,
    tolerance: float = 1.0,
) -> VerifyReport:
    """Decode ``path`` completely; ``expected_tracks`` is e.g. ``{"video": 1, "audio": 1}``."""
    try:
        with av.open(str(path)) as container:
            count = len(container.streams)
    except (av.FFmpegError, OSError) as exc:
        raise VerificationError(f"cannot open {path}: {exc}") from exc
    streams = tuple(_decode_stream(path, i) for i in range(count))
    problems: list[str] = []
    starts = [s.start for s in streams if s.start is not None]
    ends = [s.end for s in streams if s.end is not None]
    duration = (max(ends) - min(starts)) if starts and ends else 0.0
    for s in streams:
        if s.decode_errors:
            problems.append(f"stream {s.index} ({s.codec}): {s.decode_errors} decode errors")
        if s.frames == 0:
            problems.append(f"stream {s.index} ({s.codec}): no frames")
    kinds: dict[str, int] = {}
    for s in streams:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    for kind, n in (expected_tracks or {}).items():
        if kinds.get(kind, 0) < n:
            problems.append(f"expected {n} {kind} track(s), found {kinds.get(kind, 0)}")
    if expected_duration is not None and abs(duration - expected_duration) > tolerance:
        problems.append(f"duration {duration:.3f}s, expected {expected_duration:.3f}s +- {tolerance}s")

    def edge(kind: str, values: str) -> float | None:
        xs = [getattr(s, values) for s in streams if s.kind == kind and getattr(s, values) is not None]
        if not xs:
            return None
        return float(min(xs) if values == "start" else max(xs))

    va, aa = edge("video", "start"), edge("audio", "start")
    ve, ae = edge("video", "end"), edge("audio", "end")
    start_offset = round((va - aa) * 1000, 1) if va is not None and aa is not None else None
    end_offset = round((ve - ae) * 1000, 1) if ve is not None and ae is not None else None
    return VerifyReport(
        path=str(path),
        ok=not problems,
        duration=round(duration, 4),
        expected_duration=expected_duration,
        streams=streams,
        av_start_offset_ms=start_offset,
        av_end_offset_ms=end_offset,
        problems=tuple(problems),
    )
