"""After the class: build one session's final recording from every copy's segments, then verify it.

Layout the workers write (``recorder/worker.py``)::

    <session_id>/<copy_id>/p<k>/seg-NNNNNN.mkv + seg-NNNNNN.json     one directory per part of a copy
    <session_id>/recording.mkv                                        the final file (written here)

Every part directory is one more copy for ``assemble`` (a copy that followed its room to another node has two
parts; a replaced copy's segments count up to its failure), including the ``.part`` segment a killed recorder was
writing, salvaged up to about a second before the kill (``writer.salvage_segment``). The media interval is the
span the copies recorded, widened to what presence reported (first publish .. last leave) when that lies more
than ``edge_tolerance`` outside it: inner gaps are exact to the frame, gaps at the very start or end of a class
are detected from 2 s on (presence events are stamped when a track is negotiated, which precedes its first
packet by up to a second).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .assemble import assemble
from .errors import AssemblyError, RecorderError
from .verify import verify_file
from .writer import SegmentInfo, load_manifest

logger = logging.getLogger(__name__)

FINAL_NAME = "recording.mkv"


@dataclass(frozen=True, slots=True)
class FinalRecording:
    ok: bool
    path: str | None
    coverage: float
    gaps: tuple[tuple[float, float], ...]
    media_start: float | None
    media_end: float | None
    duration: float | None
    size_bytes: int | None
    problems: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)


def copies_of(session_dir: Path) -> dict[str, list[SegmentInfo]]:
    """Every part directory below ``session_dir`` with at least one complete segment, by ``copy/part``."""
    found: dict[str, list[SegmentInfo]] = {}
    if not session_dir.is_dir():
        return found
    for part in sorted(p for p in session_dir.glob("*/*") if p.is_dir()):
        segments = load_manifest(part, salvage=True)
        if segments:
            found[f"{part.parent.name}/{part.name}"] = segments
    return found


def finalize(
    session_dir: Path,
    *,
    presence_start: float | None = None,
    presence_end: float | None = None,
    edge_tolerance: float = 2.0,
) -> FinalRecording:
    """Assemble and verify; never raises for a bad recording (the result says what is wrong)."""
    copies = copies_of(session_dir)
    if not copies:
        start, end = presence_start, presence_end
        gaps = ((start, end),) if start is not None and end is not None and end > start else ()
        return FinalRecording(False, None, 0.0, gaps, start, end, None, None, ("no copy recorded anything",))
    starts = [s.start for c in copies.values() for s in c if s.start is not None]
    ends = [s.end for c in copies.values() for s in c if s.end is not None]
    start, end = min(starts), max(ends)
    if presence_start is not None and presence_start < start - edge_tolerance:
        start = presence_start
    if presence_end is not None and presence_end > end + edge_tolerance:
        end = presence_end
    output = session_dir / FINAL_NAME
    try:
        # the copies' own edges may differ by the packets in flight as the room opened or closed: 0.5 s of slack
        result = assemble(list(copies.values()), output, start, end, edge=0.5)
    except (AssemblyError, RecorderError) as exc:
        return FinalRecording(False, None, 0.0, ((start, end),), start, end, None, None, (f"assembly: {exc}",))
    kinds: dict[str, int] = {}
    for figures in result.tracks.values():
        kinds[figures["kind"]] = kinds.get(figures["kind"], 0) + 1
    report = verify_file(output, expected_duration=end - start, expected_tracks=kinds)
    problems = list(report.problems)
    if result.gaps:
        problems.append(f"{len(result.gaps)} gap(s), coverage {result.coverage:.4f}")
    details = {
        "copies": sorted(copies),
        "switches": result.switches,
        "tracks": {tid: {"kind": f["kind"], "packets": f["packets"]} for tid, f in result.tracks.items()},
        "verification": {
            "ok": report.ok,
            "duration": report.duration,
            "expected_duration": round(end - start, 4),
            "av_start_offset_ms": report.av_start_offset_ms,
            "av_end_offset_ms": report.av_end_offset_ms,
            "streams": [{"kind": s.kind, "codec": s.codec, "frames": s.frames} for s in report.streams],
            "problems": list(report.problems),
        },
    }
    return FinalRecording(
        ok=not problems,
        path=str(output),
        coverage=result.coverage,
        gaps=result.gaps,
        media_start=start,
        media_end=end,
        duration=report.duration,
        size_bytes=output.stat().st_size,
        problems=tuple(problems),
        details=details,
    )
