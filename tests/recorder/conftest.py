"""Fixtures of the recorder tests: real encoded media made once per session by ffmpeg."""

from __future__ import annotations

from pathlib import Path

import pytest

from .media import Encoded, demux, make_h264, make_opus, make_vp8


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recorder-media")


@pytest.fixture(scope="session")
def vp8_frames(media_dir: Path) -> list[Encoded]:
    """14 s of 320x240 VP8 at 30 fps, a keyframe every second."""
    return demux(make_vp8(media_dir / "vp8.webm", 14))


@pytest.fixture(scope="session")
def h264_frames(media_dir: Path) -> list[Encoded]:
    """14 s of 320x240 H.264 constrained baseline at 30 fps, an IDR every second."""
    return demux(make_h264(media_dir / "h264.ts", 14))


@pytest.fixture(scope="session")
def opus_frames(media_dir: Path) -> list[Encoded]:
    """14 s of a 440 Hz sine as 20 ms Opus packets."""
    return demux(make_opus(media_dir / "opus.ogg", 14))
