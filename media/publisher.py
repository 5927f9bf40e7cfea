"""The publisher peer connection of one participant: the client offers, the SFU answers.

States: new → negotiated (re-negotiable any number of times) → closed. Each offered m-section the
client sends on becomes a ``PublishedTrack``; an m-section that stops sending (direction change,
port 0) unpublishes its track. Sources come from the client next to the offer (mid → camera |
microphone | screen); a missing entry defaults to microphone for audio and camera for video.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, sdp

from .errors import InvalidSdpError, NegotiationError, PermissionDeniedError
from .forwarding import rtc_configuration, transceiver_codecs
from .metrics import NodeMetrics
from .track import KIND_OF_SOURCE, PublishedTrack

logger = logging.getLogger(__name__)

PERMISSION_OF_SOURCE = {"camera": "video", "microphone": "audio", "screen": "screen"}


def offered_sources(offer_sdp: str, sources: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """mid → (kind, source) of every m-section the client sends on. Raises InvalidSdpError."""
    if not offer_sdp.lstrip().startswith("v=0"):
        raise InvalidSdpError("offer is not SDP (must start with v=0)")
    try:
        description = sdp.SessionDescription.parse(offer_sdp)
    except Exception as exc:
        raise InvalidSdpError(f"cannot parse offer: {exc}") from exc
    if not description.media:
        raise InvalidSdpError("offer has no m-sections")
    out: dict[str, tuple[str, str]] = {}
    for media in description.media:
        if media.kind not in ("audio", "video"):
            continue
        mid = media.rtp.muxId
        if not mid:
            raise InvalidSdpError("every m-section needs an a=mid")
        if media.port == 0 or media.direction not in ("sendrecv", "sendonly"):
            continue
        source = sources.get(mid) or ("microphone" if media.kind == "audio" else "camera")
        if KIND_OF_SOURCE.get(source) != media.kind:
            raise InvalidSdpError(f"mid {mid}: source {source!r} does not fit a {media.kind} m-section")
        out[mid] = (media.kind, source)
    return out


class Publisher:
    def __init__(
        self,
        participant_id: str,
        *,
        metrics: NodeMetrics,
        on_published: Callable[[PublishedTrack], None],
        on_unpublished: Callable[[PublishedTrack], None],
        make_audio_level_handler: Callable[[], Callable[[int, float], None]],
        rtc_configuration: RTCConfiguration | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.participant_id = participant_id
        self._metrics = metrics
        self._on_published = on_published
        self._on_unpublished = on_unpublished
        self._audio_level = make_audio_level_handler
        self._config = rtc_configuration
        self._pc: RTCPeerConnection | None = None
        self._tracks: dict[str, PublishedTrack] = {}  # by mid
        self._closed = False
        self._on_failed = on_failed

    @property
    def tracks(self) -> tuple[PublishedTrack, ...]:
        return tuple(self._tracks.values())

    def track_by_source(self, source: str) -> PublishedTrack | None:
        return next((t for t in self._tracks.values() if t.source == source), None)

    def check(
        self, offer_sdp: str, sources: Mapping[str, str], can_publish: frozenset[str]
    ) -> tuple[dict[str, tuple[str, str]], int]:
        """Validate an offer; returns (mid → (kind, source), number of new tracks)."""
        offered = offered_sources(offer_sdp, sources)
        for mid, (_kind, source) in offered.items():
            if PERMISSION_OF_SOURCE[source] not in can_publish:
                raise PermissionDeniedError(f"participant may not publish {source} (mid {mid})")
        new = sum(1 for mid in offered if mid not in self._tracks)
        return offered, new

    async def handle_offer(self, offer_sdp: str, offered: dict[str, tuple[str, str]]) -> str:
        if self._closed:
            raise NegotiationError("publisher is closed")
        if self._pc is None:
            self._pc = RTCPeerConnection(self._config or rtc_configuration())
            self._pc.on("connectionstatechange", self._state_changed)
        pc = self._pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:  # aiortc raises several types for bad SDP
            raise NegotiationError(f"cannot negotiate offer: {exc}") from exc
        seen: set[str] = set()
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or mid not in offered:
                continue
            seen.add(mid)
            if mid in self._tracks:
                continue
            kind, source = offered[mid]
            track = PublishedTrack(
                track_id=f"TR_{uuid.uuid4().hex[:12]}",
                participant_id=self.participant_id,
                kind=kind,
                source=source,
                codecs=transceiver_codecs(transceiver),
                metrics=self._metrics,
                on_audio_level=self._audio_level() if kind == "audio" else None,
            )
            track.attach(transceiver.receiver)
            self._tracks[mid] = track
            logger.info(
                "participant=%s track=%s kind=%s source=%s published",
                self.participant_id,
                track.track_id,
                kind,
                source,
            )
            self._on_published(track)
        for mid in [m for m in self._tracks if m not in seen]:
            track = self._tracks.pop(mid)
            self._on_unpublished(track)
            await track.close()
        return pc.localDescription.sdp

    def _state_changed(self) -> None:
        state = self._pc.connectionState if self._pc is not None else "closed"
        logger.info("participant=%s publisher connection=%s", self.participant_id, state)
        if state in ("failed", "closed") and not self._closed and self._on_failed is not None:
            self._on_failed(state)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tracks = list(self._tracks.values())
        self._tracks.clear()
        for track in tracks:
            self._on_unpublished(track)
            await track.close()
        if self._pc is not None:
            await asyncio.shield(self._pc.close())  # a cancelled caller must not cancel aiortc's close future
