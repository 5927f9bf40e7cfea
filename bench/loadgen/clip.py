"""The benchmark's pre-encoded media, made once with the ffmpeg CLI and cached.

Video: VP8 640x480, 30 fps, about 1 Mbit/s (a moving test pattern with temporal noise so that the
encoder cannot compress it away), a keyframe every 2 s. Audio: Opus 48 kHz mono, 20 ms frames, a tone.
The packets are read into memory with PyAV so that publishers only packetise them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

CLIP_SECONDS = 20
VIDEO_BITRATE = 1_000_000
_VERSION = "1"  # bump when the recipe below changes


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes
    pts: int  # in the stream's time base
    keyframe: bool


@dataclass(frozen=True, slots=True)
class EncodedStream:
    kind: str  # "video" | "audio"
    time_base: Fraction
    duration: int  # one loop, in time_base units
    frames: tuple[EncodedFrame, ...]

    @property
    def bitrate(self) -> float:
        seconds = float(self.duration * self.time_base)
        return sum(len(f.data) for f in self.frames) * 8 / seconds if seconds else 0.0


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(tempfile.gettempdir(), "classmesh-cache")
    path = Path(base) / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _recipe_key() -> str:
    return hashlib.sha256(f"{_VERSION}:{CLIP_SECONDS}:{VIDEO_BITRATE}".encode()).hexdigest()[:12]


def ensure_clip(directory: Path | None = None) -> tuple[Path, Path]:
    """Paths of the cached VP8 (.ivf) and Opus (.ogg) files, encoding them on first use."""
    ffmpeg = shutil.which("ffmpeg")
    directory = directory or cache_dir()
    key = _recipe_key()
    video = directory / f"vp8-640x480-30-{key}.ivf"
    audio = directory / f"opus-48k-{key}.ogg"
    if not video.exists():
        if ffmpeg is None:
            raise RuntimeError("ffmpeg is not installed (apt-get install ffmpeg); it makes the benchmark clip")
        tmp = video.with_suffix(".tmp.ivf")
        subprocess.run(
            [
                ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
                "-f", "lavfi", "-i", f"testsrc2=size=640x480:rate=30:duration={CLIP_SECONDS}",
                "-vf", "noise=alls=12:allf=t",
                "-c:v", "libvpx", "-b:v", str(VIDEO_BITRATE), "-minrate", str(VIDEO_BITRATE),
                "-maxrate", str(VIDEO_BITRATE), "-bufsize", str(VIDEO_BITRATE // 2),
                "-g", "60", "-keyint_min", "60", "-deadline", "realtime", "-cpu-used", "8",
                "-auto-alt-ref", "0", "-lag-in-frames", "0", "-error-resilient", "1",
                str(tmp),
            ],
            check=True,
        )  # fmt: skip
        tmp.rename(video)
    if not audio.exists():
        if ffmpeg is None:
            raise RuntimeError("ffmpeg is not installed (apt-get install ffmpeg); it makes the benchmark clip")
        tmp = audio.with_suffix(".tmp.ogg")
        subprocess.run(
            [
                ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
                "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={CLIP_SECONDS}",
                "-ac", "1", "-c:a", "libopus", "-b:a", "32k", "-frame_duration", "20", "-application", "voip",
                str(tmp),
            ],
            check=True,
        )  # fmt: skip
        tmp.rename(audio)
    return video, audio


def load_stream(path: Path, kind: str) -> EncodedStream:
    """All packets of the first ``kind`` stream of ``path``, with pts starting at 0."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        time_base = stream.time_base
        assert time_base is not None
        frames: list[EncodedFrame] = []
        first: int | None = None
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            if first is None:
                first = packet.pts
            frames.append(EncodedFrame(bytes(packet), packet.pts - first, bool(packet.is_keyframe)))
    if not frames:
        raise RuntimeError(f"{path} has no {kind} packets")
    step = frames[1].pts - frames[0].pts if len(frames) > 1 else 1
    return EncodedStream(kind, Fraction(time_base), frames[-1].pts + step, tuple(frames))
