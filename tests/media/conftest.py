"""Fixtures for the media tests: loopback-only ICE, encoded test media, aiortc clients.

The clients are real aiortc peer connections standing in for browsers. They publish pre-encoded
VP8/H.264 from files made by ffmpeg (``MediaPlayer(decode=False)``: no encoder runs) and Opus
from a tone generator, and they count what they receive at RTP level.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _ffmpeg(out: Path, *codec_args: str) -> Path:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.fail("ffmpeg is not installed")
    subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
            "-t",
            "6",
            *codec_args,
            "-y",
            str(out),
        ],
        check=True,
    )
    return out


@pytest.fixture(scope="session")
def vp8_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s of 320x240 VP8 at 30 fps, ~400 kbit/s, a keyframe every 2 s."""
    out = tmp_path_factory.mktemp("media") / "test.webm"
    return _ffmpeg(out, "-c:v", "libvpx", "-b:v", "400k", "-g", "60", "-deadline", "realtime")


@pytest.fixture(scope="session")
def h264_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s of 320x240 H.264 constrained baseline, a keyframe every 2 s, in MPEG-TS (Annex B)."""
    out = tmp_path_factory.mktemp("media") / "test.ts"
    return _ffmpeg(
        out,
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        "400k",
        "-g",
        "60",
        "-bsf:v",
        "h264_mp4toannexb",
    )
