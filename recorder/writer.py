"""SegmentWriter: encoded frames of one recording copy -> segmented Matroska/WebM files.

States of a segment: buffering (declared, waiting for the first keyframe of each of its video
tracks so that dimensions and H.264 parameter sets are known when the header is written) ->
open (muxing) -> complete (flushed, fsynced, renamed into place, sidecar written) | failed.

A segment holds every track known when it opened. Each track writes into exactly one segment at a
time; a cut moves tracks to the next segment one by one, so no frame is written twice and no
frame is lost:

* a cut starts when the newest segment is at least ``segment_seconds`` long and a video track
  reaches a keyframe (that track moves at once), or immediately when a track appears that the
  newest segment does not have;
* audio tracks move at the cut instant; every other video track moves at its own next keyframe
  (``on_keyframe_needed`` is called so the recorder can ask the sender for one); a track that has
  not moved after ``cut_timeout`` seconds is moved anyway and waits for a keyframe there (a gap);
* a segment completes when no track writes into it any more.

Timing: frames come with their wall-clock time (``recorder.clock``). Packets are muxed with
millisecond pts relative to the copy's ``epoch`` (a Unix time written in every sidecar, 60 s before
the first frame written, so that frames of tracks whose clock synced later never get negative
pts), so ``wall = epoch + pts / 1000`` for every packet of every segment of every copy. A frame
whose time goes backwards is pushed 1 ms after its predecessor and counted (``clamped``).

Crash safety: a segment is written as ``seg-NNNNNN.mkv.part``; on completion it is flushed,
fsynced and renamed to ``seg-NNNNNN.mkv``, then its sidecar ``seg-NNNNNN.json`` is written
atomically. Only segments with a sidecar are listed (:func:`load_manifest`).
"""

from __future__ import annotations

import fractions
import json
import logging
import math
import os
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import av.container

from .depacketize import EncodedFrame, h264_nal_units, vp8_dimensions
from .errors import StorageError, storage_error
from .storage import atomic_write, fsync_directory

logger = logging.getLogger(__name__)

MS = fractions.Fraction(1, 1000)
CONTAINERS = {"mkv": "matroska", "webm": "webm"}
# Matroska clusters of at most 1 s, each written out when it closes: a recorder killed mid-segment leaves a
# ``.part`` file that demuxes up to about a second before the kill (see ``salvage_segment``)
MUXER_OPTIONS = {"cluster_time_limit": "1000", "flush_packets": "1"}
EPOCH_MARGIN = 60.0  # seconds between a copy's epoch and its first written frame


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """One recorded track. ``track_id`` is the node's id, the same for both copies."""

    track_id: str
    kind: str  # "audio" | "video"
    codec: str  # "vp8" | "h264" | "opus"
    participant_id: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class TrackSegmentInfo:
    kind: str
    codec: str
    participant_id: str
    source: str
    stream_index: int
    start: float | None
    end: float | None
    packets: int
    bytes: int
    keyframes: int
    gaps: tuple[tuple[float, float], ...]
    clock: str
    clamped: int = 0


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """The sidecar of one complete segment."""

    segment: str
    copy_id: str
    index: int
    container: str
    epoch: float
    bytes: int
    start: float | None
    end: float | None
    tracks: dict[str, TrackSegmentInfo]
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("path")
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any], path: str = "") -> SegmentInfo:
        tracks = {
            tid: TrackSegmentInfo(**(t | {"gaps": tuple(tuple(g) for g in t["gaps"])}))
            for tid, t in body["tracks"].items()
        }
        return cls(**(body | {"tracks": tracks, "path": path}))


def load_manifest(directory: Path, *, salvage: bool = False) -> list[SegmentInfo]:
    """The complete segments of one copy, in order. ``.part`` files (a recorder that died while writing them)
    are ignored, unless ``salvage``: then what can be demuxed of each is included (``salvage_segment``)."""
    out: list[SegmentInfo] = []
    for sidecar in sorted(directory.glob("seg-*.json")):
        if sidecar.name.endswith(".open.json"):
            if salvage and not sidecar.with_name(sidecar.name.replace(".open.json", ".json")).exists():
                info = salvage_segment(sidecar)
                if info is not None:
                    out.append(info)
            continue
        body = json.loads(sidecar.read_text())
        media = directory / body["segment"]
        if media.exists():
            out.append(SegmentInfo.from_json(body, str(media)))
    return sorted(out, key=lambda s: s.index)


def salvage_segment(open_sidecar: Path) -> SegmentInfo | None:
    """What a killed recorder left of a segment: the packets of its ``.part`` up to where the file ends.

    The Matroska muxer writes a cluster at least every second (``MUXER_OPTIONS``), so at most about a second
    before the kill is lost. Gaps inside the segment are not known (its sidecar was never written); the
    assembler finds holes from the packets themselves."""
    try:
        opened = json.loads(open_sidecar.read_text())
    except (OSError, ValueError):
        return None
    part = open_sidecar.with_name(f"{opened['segment']}.part")
    if not part.exists():
        return None
    epoch = float(opened["epoch"])
    by_index = {t["stream_index"]: tid for tid, t in opened["tracks"].items()}
    figures: dict[str, dict[str, Any]] = {tid: {"packets": 0, "bytes": 0, "keyframes": 0} for tid in by_index.values()}
    try:
        with av.open(str(part)) as container:
            try:
                for packet in container.demux():
                    tid = by_index.get(packet.stream.index)
                    if tid is None or packet.pts is None or not packet.size:
                        continue
                    wall = epoch + float(packet.pts * packet.time_base)
                    end = wall + (float(packet.duration * packet.time_base) if packet.duration else 0.0)
                    f = figures[tid]
                    f["start"] = min(f.get("start", wall), wall)
                    f["end"] = max(f.get("end", end), end)
                    f["packets"] += 1
                    f["bytes"] += packet.size
                    f["keyframes"] += bool(packet.is_keyframe)
            except (av.FFmpegError, EOFError):
                pass  # the file ends where the recorder died
    except (av.FFmpegError, OSError):
        return None
    tracks = {
        tid: TrackSegmentInfo(
            kind=t["kind"],
            codec=t["codec"],
            participant_id=t["participant_id"],
            source=t["source"],
            stream_index=t["stream_index"],
            start=figures[tid].get("start"),
            end=figures[tid].get("end"),
            packets=figures[tid]["packets"],
            bytes=figures[tid]["bytes"],
            keyframes=figures[tid]["keyframes"],
            gaps=(),
            clock="salvaged",
        )
        for tid, t in opened["tracks"].items()
    }
    starts = [t.start for t in tracks.values() if t.start is not None]
    ends = [t.end for t in tracks.values() if t.end is not None]
    if not starts:
        return None
    logger.info("salvaged %s: %.2f s", part, max(ends) - min(starts))
    return SegmentInfo(
        segment=part.name,
        copy_id=opened["copy_id"],
        index=int(opened["index"]),
        container=opened["container"],
        epoch=epoch,
        bytes=part.stat().st_size,
        start=min(starts),
        end=max(ends),
        tracks=tracks,
        path=str(part),
    )


def opus_head(channels: int = 2, sample_rate: int = 48000, pre_skip: int = 0) -> bytes:
    """The OpusHead block (RFC 7845 5.1) Matroska stores as the Opus CodecPrivate."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, sample_rate, 0, 0)


class _Bits:
    def __init__(self, data: bytes) -> None:
        self._data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self._pos = 0

    def bit(self) -> int:
        byte = self._data[self._pos >> 3]
        value = (byte >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        v = self.ue()
        return (v + 1) // 2 if v & 1 else -(v // 2)


def h264_sps_dimensions(sps: bytes) -> tuple[int, int] | None:
    """(width, height) from an H.264 SPS NAL unit (ITU-T H.264 7.3.2.1.1)."""
    try:
        r = _Bits(sps[1:])
        profile = r.bits(8)
        r.bits(16)  # constraint flags, level
        r.ue()  # sps id
        chroma = 1
        if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
            chroma = r.ue()
            if chroma == 3:
                r.bit()
            r.ue()
            r.ue()
            r.bit()
            if r.bit():  # scaling matrices
                for i in range(8 if chroma != 3 else 12):
                    if r.bit():
                        last, nxt = 8, 8
                        for _ in range(16 if i < 6 else 64):
                            if nxt:
                                nxt = (last + r.se() + 256) % 256
                            last = nxt or last
        r.ue()  # log2_max_frame_num
        poc = r.ue()
        if poc == 0:
            r.ue()
        elif poc == 1:
            r.bit()
            r.se()
            r.se()
            for _ in range(r.ue()):
                r.se()
        r.ue()
        r.bit()
        mbs_w = r.ue() + 1
        map_units_h = r.ue() + 1
        frame_mbs_only = r.bit()
        if not frame_mbs_only:
            r.bit()
        r.bit()
        width, height = mbs_w * 16, map_units_h * 16 * (2 - frame_mbs_only)
        if r.bit():  # cropping
            left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
            cx = 1 if chroma == 0 or chroma == 3 else 2
            cy = (1 if chroma in (0, 2, 3) else 2) * (2 - frame_mbs_only)
            width -= (left + right) * cx
            height -= (top + bottom) * cy
        return width, height
    except (IndexError, ValueError):
        return None


@dataclass(slots=True)
class _TrackInSegment:
    info: TrackInfo
    stream_index: int
    start: float | None = None
    end: float | None = None
    last_wall: float | None = None
    last_pts: int = -1
    packets: int = 0
    bytes: int = 0
    keyframes: int = 0
    gaps: list[tuple[float, float]] = field(default_factory=list)
    clock: str = "sr"
    clamped: int = 0  # frames whose time went backwards and was pushed forward


@dataclass(slots=True)
class _Pending:
    track_id: str
    frame: EncodedFrame
    wall: float
    duration: float


class _Segment:
    def __init__(self, index: int, directory: Path, extension: str, tracks: list[TrackInfo], opened_at: float) -> None:
        self.index = index
        self.name = f"seg-{index:06d}.{extension}"
        self.final = directory / self.name
        self.part = directory / f"{self.name}.part"
        self.sidecar = directory / f"seg-{index:06d}.json"
        self.open_sidecar = directory / f"seg-{index:06d}.open.json"  # stream map while it is being written
        self.opened_at = opened_at  # wall time of the cut that created it
        self.tracks = {t.track_id: _TrackInSegment(t, i) for i, t in enumerate(tracks)}
        self.container: av.container.OutputContainer | None = None
        self.streams: dict[str, Any] = {}
        self.buffer: list[_Pending] = []
        self.start: float | None = None  # wall time of its earliest muxed frame
        self.first_frames: dict[str, EncodedFrame] = {}

    def duration(self, wall: float) -> float:
        return wall - self.start if self.start is not None else 0.0


@dataclass(slots=True)
class _TrackState:
    info: TrackInfo
    segment: _Segment | None = None
    moving: bool = False  # should move to the newest segment at its next keyframe
    need_keyframe: bool = False
    last_end: float | None = None
    last_wall: float | None = None
    frame_duration: float = 0.0
    bytes: int = 0
    packets: int = 0
    keyframes: int = 0
    gaps: int = 0
    last_keyframe: float | None = None


@dataclass(frozen=True, slots=True)
class WriterStats:
    segments: int
    bytes: int
    packets: int
    gaps: int
    per_track: dict[str, dict[str, Any]]


class SegmentWriter:
    """Writes one recording copy as ~``segment_seconds`` segments in ``directory``."""

    def __init__(
        self,
        directory: Path,
        copy_id: str,
        *,
        container: str = "mkv",
        segment_seconds: float = 10.0,
        cut_timeout: float = 3.0,
        header_wait: float = 5.0,
        epoch: float | None = None,
        on_keyframe_needed: Callable[[str], None] | None = None,
        on_segment: Callable[[SegmentInfo], None] | None = None,
        fsync: bool = True,
    ) -> None:
        if container not in CONTAINERS:
            raise ValueError(f"container must be one of {sorted(CONTAINERS)}")
        self.directory = directory
        self.copy_id = copy_id
        self.container = container
        self.segment_seconds = segment_seconds
        self.cut_timeout = cut_timeout
        self.header_wait = header_wait
        self._epoch = epoch
        self._on_keyframe_needed = on_keyframe_needed
        self._on_segment = on_segment
        self._fsync = fsync
        self._tracks: dict[str, _TrackState] = {}
        self._ended: dict[str, _TrackState] = {}  # removed tracks, kept for their totals
        self._open: list[_Segment] = []
        self._next_index = 1
        self._complete: list[SegmentInfo] = []
        self._closed = False
        self._failed: StorageError | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error("creating", directory, exc) from exc
        if container == "webm":
            self._allowed = {"vp8", "opus"}
        else:
            self._allowed = {"vp8", "h264", "opus"}

    # -- properties ----------------------------------------------------------------------------

    @property
    def epoch(self) -> float | None:
        return self._epoch

    @property
    def segments(self) -> list[SegmentInfo]:
        return list(self._complete)

    @property
    def failed(self) -> StorageError | None:
        return self._failed

    def stats(self) -> WriterStats:
        everything = self._ended | self._tracks
        per_track = {
            tid: {
                "kind": t.info.kind,
                "codec": t.info.codec,
                "bytes": t.bytes,
                "packets": t.packets,
                "keyframes": t.keyframes,
                "gaps": t.gaps,
                "last_keyframe": t.last_keyframe,
                "waiting_for_keyframe": t.need_keyframe,
            }
            for tid, t in everything.items()
        }
        return WriterStats(
            segments=len(self._complete),
            bytes=sum(t.bytes for t in everything.values()),
            packets=sum(t.packets for t in everything.values()),
            gaps=sum(t.gaps for t in everything.values()),
            per_track=per_track,
        )

    # -- tracks --------------------------------------------------------------------------------

    def add_track(self, info: TrackInfo) -> None:
        if info.codec not in self._allowed:
            raise ValueError(f"codec {info.codec!r} cannot go into {self.container}")
        if info.kind not in ("audio", "video"):
            raise ValueError(f"kind must be audio or video, not {info.kind!r}")
        if info.track_id not in self._tracks:
            previous = self._ended.pop(info.track_id, None)
            state = _TrackState(info, need_keyframe=info.kind == "video")
            if previous is not None:  # republished: totals continue
                state.bytes, state.packets, state.gaps = previous.bytes, previous.packets, previous.gaps
                state.keyframes = previous.keyframes
            self._tracks[info.track_id] = state

    def remove_track(self, track_id: str) -> None:
        state = self._tracks.pop(track_id, None)
        if state is not None:
            self._ended[track_id] = state
        if state is not None and state.segment is not None and self._failed is None:
            state.segment = None
            try:
                self._complete_unused()
            except StorageError as exc:
                self._fail(exc)
            except OSError as exc:
                self._fail(exc)

    # -- writing -------------------------------------------------------------------------------

    def write(self, track_id: str, frame: EncodedFrame, wall: float, *, clock: str = "sr") -> None:
        """Write one frame of ``track_id`` placed at wall-clock time ``wall``."""
        if self._closed:
            raise RuntimeError("writer is closed")
        if self._failed is not None:
            raise self._failed
        state = self._tracks.get(track_id)
        if state is None:
            raise KeyError(f"unknown track {track_id!r}")
        if self._epoch is None:
            # a minute of margin: held-back tracks may deliver frames older than the first one written
            self._epoch = float(math.floor(wall)) - EPOCH_MARGIN
        video = state.info.kind == "video"
        if state.last_wall is not None and wall > state.last_wall:
            step = wall - state.last_wall
            if step < 1.0:
                state.frame_duration = step
        if frame.after_loss and state.last_end is not None and wall > state.last_end:
            self._gap(state, state.last_end, wall)
        try:
            if video and state.need_keyframe:
                if not frame.keyframe:
                    return
                state.need_keyframe = False
                if state.last_end is not None and wall - state.last_end > max(state.frame_duration * 1.5, 0.001):
                    if not frame.after_loss:
                        self._gap(state, state.last_end, wall)
            self._route(state, frame, wall)
            segment = state.segment
            assert segment is not None
            duration = state.frame_duration or (0.02 if not video else 1 / 30)
            self._into(segment, _Pending(track_id, frame, wall, duration), clock)
            state.last_wall = wall
            state.last_end = wall + duration
            state.bytes += len(frame.data)
            state.packets += 1
            if frame.keyframe:
                state.keyframes += 1
                if video:
                    state.last_keyframe = wall
            self._expire(wall)
        except StorageError as exc:
            raise self._fail(exc) from None
        except OSError as exc:
            raise self._fail(exc) from exc

    def note_gap(self, track_id: str, start: float, end: float) -> None:
        state = self._tracks.get(track_id)
        if state is not None and end > start:
            self._gap(state, start, end)

    def _gap(self, state: _TrackState, start: float, end: float) -> None:
        state.gaps += 1
        segment = state.segment or (self._open[-1] if self._open else None)
        if segment is not None and state.info.track_id in segment.tracks:
            segment.tracks[state.info.track_id].gaps.append((round(start, 4), round(end, 4)))
        logger.info(
            "copy=%s track=%s gap %.3f-%.3f (%.0f ms)",
            self.copy_id,
            state.info.track_id,
            start,
            end,
            (end - start) * 1000,
        )

    def _route(self, state: _TrackState, frame: EncodedFrame, wall: float) -> None:
        """Choose the segment this frame goes into, starting a cut when it is time."""
        video = state.info.kind == "video"
        newest = self._open[-1] if self._open else None
        tid = state.info.track_id
        if newest is None or tid not in newest.tracks:
            self._cut(wall)  # a track the newest segment's header does not have
            newest = self._open[-1]
        if state.segment is None or tid not in state.segment.tracks:
            # the track's first frame, or its segment's header was written before it delivered any
            state.segment = newest
            state.moving = False
            self._complete_unused()
            return
        if state.moving and (not video or frame.keyframe):
            state.segment = newest
            state.moving = False
            self._complete_unused()
            return
        if state.segment is newest and newest.duration(wall) >= self.segment_seconds and not self._cutting():
            has_video = any(t.info.kind == "video" for t in self._tracks.values())
            if (video and frame.keyframe) or not has_video:
                self._cut(wall)
                state.segment = self._open[-1]
                state.moving = False
                self._complete_unused()

    def _cutting(self) -> bool:
        return any(t.moving for t in self._tracks.values())

    def _cut(self, wall: float) -> None:
        tracks = [t.info for t in self._tracks.values()]
        segment = _Segment(self._next_index, self.directory, self.container, tracks, wall)
        self._next_index += 1
        self._open.append(segment)
        for state in self._tracks.values():
            if state.segment is None:
                continue
            if state.info.kind == "audio":
                state.segment = segment
            else:
                state.moving = True
                if self._on_keyframe_needed is not None:
                    self._on_keyframe_needed(state.info.track_id)
        self._complete_unused()

    def _expire(self, wall: float) -> None:
        """Move tracks still writing into an old segment ``cut_timeout`` after its successor opened."""
        if len(self._open) < 2:
            return
        newest = self._open[-1]
        if wall - newest.opened_at < self.cut_timeout:
            return
        for state in self._tracks.values():
            if state.moving and state.segment is not newest:
                state.segment = newest
                state.moving = False
                state.need_keyframe = state.info.kind == "video"
        self._complete_unused()

    # -- segments ------------------------------------------------------------------------------

    def _into(self, segment: _Segment, item: _Pending, clock: str) -> None:
        track = segment.tracks[item.track_id]
        track.clock = clock
        if segment.container is None:
            segment.buffer.append(item)
            segment.first_frames.setdefault(item.track_id, item.frame)
            videos = [t for t in segment.tracks.values() if t.info.kind == "video"]
            ready = all(t.info.track_id in segment.first_frames for t in videos)
            if ready or item.wall - segment.buffer[0].wall >= self.header_wait:
                self._start(segment)
            return
        self._mux(segment, item)

    def _start(self, segment: _Segment) -> None:
        try:
            container = av.open(str(segment.part), "w", format=CONTAINERS[self.container], options=MUXER_OPTIONS)
        except OSError as exc:
            raise self._fail(exc) from exc
        segment.container = container
        # a stream per track that delivered a frame or is routed here; a track that has not written
        # anything yet (its clock is still syncing) would be an empty stream: it starts the next segment
        present = {p.track_id for p in segment.buffer}

        def keep(tid: str) -> bool:
            state = self._tracks.get(tid)
            return tid in present or (state is not None and (state.segment is segment or state.moving))

        segment.tracks = {tid: t for tid, t in segment.tracks.items() if keep(tid)}
        for index, (tid, track) in enumerate(segment.tracks.items()):
            track.stream_index = index
            info = track.info
            stream = container.add_stream(info.codec)
            stream.time_base = MS
            first = segment.first_frames.get(tid)
            ctx: Any = stream.codec_context
            if info.codec == "opus":
                ctx.extradata = opus_head()
            elif info.codec == "vp8" and first is not None:
                dims = vp8_dimensions(first.data)
                if dims:
                    ctx.width, ctx.height = dims
            elif info.codec == "h264" and first is not None:
                nals = h264_nal_units(first.data)
                params = [n for n in nals if n[0] & 0x1F in (7, 8)]
                if any(n[0] & 0x1F == 7 for n in params) and any(n[0] & 0x1F == 8 for n in params):
                    ctx.extradata = b"".join(b"\x00\x00\x00\x01" + n for n in params)
                    sps = next(n for n in params if n[0] & 0x1F == 7)
                    dims = h264_sps_dimensions(sps)
                    if dims:
                        ctx.width, ctx.height = dims
            segment.streams[tid] = stream
        assert self._epoch is not None
        opened = {
            "segment": segment.name,
            "copy_id": self.copy_id,
            "index": segment.index,
            "container": self.container,
            "epoch": self._epoch,
            "tracks": {
                tid: {
                    "kind": t.info.kind,
                    "codec": t.info.codec,
                    "participant_id": t.info.participant_id,
                    "source": t.info.source,
                    "stream_index": t.stream_index,
                }
                for tid, t in segment.tracks.items()
            },
        }
        try:
            atomic_write(segment.open_sidecar, json.dumps(opened).encode())
        except OSError as exc:
            raise self._fail(exc, segment) from exc
        buffered, segment.buffer = segment.buffer, []
        for item in sorted(buffered, key=lambda p: p.wall):
            self._mux(segment, item)

    def _mux(self, segment: _Segment, item: _Pending) -> None:
        assert segment.container is not None and self._epoch is not None
        track = segment.tracks[item.track_id]
        wanted = round((item.wall - self._epoch) * 1000)
        pts = max(wanted, track.last_pts + 1, 0)
        if pts - wanted > 1:
            track.clamped += 1
        packet = av.Packet(item.frame.data)
        packet.stream = segment.streams[item.track_id]
        packet.time_base = MS
        packet.pts = packet.dts = pts
        packet.duration = max(1, round(item.duration * 1000))
        packet.is_keyframe = item.frame.keyframe
        segment.container.mux(packet)
        track.last_pts = pts
        wall = self._epoch + pts / 1000
        if track.start is None:
            track.start = wall
            if segment.start is None or wall < segment.start:
                segment.start = wall
        track.end = wall + item.duration
        track.packets += 1
        track.bytes += len(item.frame.data)
        track.keyframes += item.frame.keyframe

    def _complete_unused(self) -> None:
        in_use = {id(t.segment) for t in self._tracks.values() if t.segment is not None}
        newest = self._open[-1] if self._open else None
        for segment in list(self._open):
            if segment is newest or id(segment) in in_use:
                continue
            self._open.remove(segment)
            self._finish(segment)

    def _finish(self, segment: _Segment) -> None:
        if segment.container is None and segment.buffer:
            self._start(segment)
        if segment.container is None:
            return  # nothing was ever written into it
        try:
            segment.container.close()
            segment.container = None
            if self._fsync:
                with open(segment.part, "rb+") as fh:
                    os.fsync(fh.fileno())
            os.replace(segment.part, segment.final)
            if self._fsync:
                fsync_directory(self.directory)
            size = segment.final.stat().st_size
        except OSError as exc:
            raise self._fail(exc, segment) from exc
        tracks = {
            tid: TrackSegmentInfo(
                kind=t.info.kind,
                codec=t.info.codec,
                participant_id=t.info.participant_id,
                source=t.info.source,
                stream_index=t.stream_index,
                start=t.start,
                end=t.end,
                packets=t.packets,
                bytes=t.bytes,
                keyframes=t.keyframes,
                gaps=tuple(t.gaps),
                clock=t.clock,
                clamped=t.clamped,
            )
            for tid, t in segment.tracks.items()
        }
        starts = [t.start for t in tracks.values() if t.start is not None]
        ends = [t.end for t in tracks.values() if t.end is not None]
        assert self._epoch is not None
        info = SegmentInfo(
            segment=segment.name,
            copy_id=self.copy_id,
            index=segment.index,
            container=self.container,
            epoch=self._epoch,
            bytes=size,
            start=min(starts) if starts else None,
            end=max(ends) if ends else None,
            tracks=tracks,
            path=str(segment.final),
        )
        try:
            atomic_write(segment.sidecar, json.dumps(info.to_json(), indent=1).encode())
            segment.open_sidecar.unlink(missing_ok=True)
        except OSError as exc:
            raise self._fail(exc, segment) from exc
        self._complete.append(info)
        logger.info(
            "copy=%s segment=%s complete bytes=%d duration=%.2f",
            self.copy_id,
            segment.name,
            size,
            (info.end or 0) - (info.start or 0),
        )
        if self._on_segment is not None:
            self._on_segment(info)

    def _fail(self, exc: OSError | StorageError, segment: _Segment | None = None) -> StorageError:
        error = exc if isinstance(exc, StorageError) else storage_error("writing segment in", self.directory, exc)
        if self._failed is None:
            self._failed = error
            logger.error("copy=%s storage failed: %s", self.copy_id, error.message)
            for seg in [*self._open, *([segment] if segment else [])]:
                if seg.container is not None:
                    try:
                        seg.container.close()
                    except OSError:
                        pass
                    seg.container = None
            self._open.clear()
        return self._failed

    def close(self) -> list[SegmentInfo]:
        """Finish every open segment (idempotent); returns all complete segments."""
        if self._closed:
            return self.segments
        self._closed = True
        if self._failed is None:
            for state in self._tracks.values():
                state.segment = None
            try:
                for segment in list(self._open):
                    self._open.remove(segment)
                    self._finish(segment)
            except StorageError:
                pass
        return self.segments

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
