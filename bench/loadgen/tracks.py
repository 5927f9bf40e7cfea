"""aiortc tracks that send the cached clip without encoding.

``ClipTrack.recv`` returns ``av.Packet`` objects, which aiortc's sender packetises as they are (no
encoder runs). Packets are paced by their presentation time against CLOCK_MONOTONIC; the clip loops
with presentation times that keep growing, so RTP timestamps never jump back.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
from aiortc import MediaStreamTrack

from .clip import EncodedStream

RTP_CLOCK = {"video": 90000, "audio": 48000}


class ClipTrack(MediaStreamTrack):
    """One looping pre-encoded stream; ``frames_sent`` counts frames handed to aiortc."""

    def __init__(self, stream: EncodedStream, start_frame: int = 0) -> None:
        super().__init__()
        self.kind = stream.kind
        self._stream = stream
        self._clock = RTP_CLOCK[stream.kind]
        self._time_base = Fraction(1, self._clock)
        self._index = start_frame % len(stream.frames)
        self._round = 0
        self._start: float | None = None
        self.frames_sent = 0

    async def recv(self) -> av.Packet:
        stream = self._stream
        if self._index == len(stream.frames):
            self._index = 0
            self._round += 1
        frame = stream.frames[self._index]
        self._index += 1
        media_time = (self._round * stream.duration + frame.pts) * stream.time_base
        now = time.monotonic()
        if self._start is None:
            self._start = now - float(media_time)
        delay = self._start + float(media_time) - now
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(frame.data)
        packet.pts = int(media_time * self._clock)
        packet.time_base = self._time_base
        self.frames_sent += 1
        return packet


def spread_start(stream: EncodedStream, index: int, count: int) -> int:
    """The frame publisher ``index`` of ``count`` starts its loop at, so that their keyframes fall evenly
    apart within one keyframe interval, as those of independent cameras do: publishers that all started
    on frame 0 would send their keyframes (each ~6 times a delta frame) at the same moment."""
    keyframes = [i for i, frame in enumerate(stream.frames) if frame.keyframe]
    interval = keyframes[1] - keyframes[0] if len(keyframes) > 1 else len(stream.frames)
    return (index * interval) // max(1, count)
