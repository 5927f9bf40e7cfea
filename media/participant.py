"""A participant of a room: its publisher and subscriber connections and its speaking state.

States: joined → closed. Events (through the room): TrackPublished/TrackUnpublished for its
tracks, SubscriberOffer for its subscriber connection, SpeakingChanged, ConnectionQuality.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .errors import PermissionDeniedError, TrackLimitError
from .events import ParticipantInfo, Quality
from .publisher import Publisher
from .rtp import AudioLevelMeter
from .subscriber import Subscriber
from .track import PublishedTrack

if TYPE_CHECKING:
    from .room import Room

logger = logging.getLogger(__name__)


class Participant:
    def __init__(self, room: Room, info: ParticipantInfo) -> None:
        self.info = info
        self._room = room
        self._meter = AudioLevelMeter()
        self._closed = False
        self.publisher = Publisher(
            info.participant_id,
            metrics=room.metrics,
            on_published=self._published,
            on_unpublished=self._unpublished,
            make_audio_level_handler=lambda: self._audio_level,
            rtc_configuration=room.rtc_configuration,
            on_failed=self._failed,
        )
        self.subscriber: Subscriber | None = None
        if info.can_subscribe:
            self.subscriber = Subscriber(
                info.participant_id,
                metrics=room.metrics,
                on_offer=self._offer,
                on_quality=self._quality,
                limits=room.limits,
                rtc_configuration=room.rtc_configuration,
                pause_after=room.settings.remb_pause_after,
                resume_after=room.settings.remb_resume_after,
                on_failed=self._failed,
                plain_remote=info.plain,
                on_plain_tracks=self._plain_tracks,
            )

    @property
    def participant_id(self) -> str:
        return self.info.participant_id

    @property
    def talk_time_ms(self) -> int:
        return self._meter.talk_time_ms(time.monotonic())

    @property
    def speaking(self) -> bool:
        return self._meter.speaking

    @property
    def audio_level(self) -> float:
        """Smoothed audio level in -dBov (0 loudest, 127 silence)."""
        return self._meter.level

    def published_tracks(self) -> tuple[PublishedTrack, ...]:
        return self.publisher.tracks

    async def publish(self, offer_sdp: str, sources: Mapping[str, str]) -> str:
        """Apply the client's publisher offer (re-callable to renegotiate); returns the answer SDP.

        ``sources`` maps each sending m-section's mid to camera|microphone|screen.
        """
        if self.info.role == "observer" or not self.info.can_publish:
            raise PermissionDeniedError(f"participant {self.participant_id} may not publish")
        offered, new = self.publisher.check(offer_sdp, sources, self.info.can_publish)
        total = self._room.published_track_count()
        if new and total + new > self._room.settings.max_tracks:
            raise TrackLimitError(f"room {self._room.room_id} allows {self._room.settings.max_tracks} published tracks")
        return await self.publisher.handle_offer(offer_sdp, offered)

    async def subscriber_answer(self, answer_sdp: str) -> None:
        if self.subscriber is None:
            raise PermissionDeniedError(f"participant {self.participant_id} does not subscribe")
        await self.subscriber.handle_answer(answer_sdp)

    def set_muted(self, source: str, muted: bool) -> None:
        track = self.publisher.track_by_source(source)
        if track is not None:
            track.set_muted(muted)
        if source == "microphone" and muted:
            self._speaking_change(self._meter.tick(time.monotonic() + self._meter.stop_hold))

    def request_keyframe(self) -> None:
        """Ask the publishers of every video track this participant receives for a keyframe."""
        if self.subscriber is not None:
            self.subscriber.request_keyframes()

    # -- callbacks ---------------------------------------------------------------------------------

    def _published(self, track: PublishedTrack) -> None:
        self._room._track_published(self, track)

    def _unpublished(self, track: PublishedTrack) -> None:
        self._room._track_unpublished(self, track)

    def _failed(self, state: str) -> None:
        if not self._closed:
            self._room._connection_failed(self, state)

    def _offer(self, sdp: str) -> None:
        self._room._subscriber_offer(self, sdp)

    def _plain_tracks(self, tracks: dict[str, dict[str, object]]) -> None:
        self._room._plain_tracks(self, tracks)

    def _quality(self, quality: Quality, loss: float, rtt_ms: float | None) -> None:
        self._room._quality(self, quality, loss, rtt_ms)

    def _audio_level(self, level: int, now: float) -> None:
        self._speaking_change(self._meter.add(level, now))

    def tick(self, now: float) -> None:
        self._speaking_change(self._meter.tick(now))

    def _speaking_change(self, change: bool | None) -> None:
        if change is not None:
            self._room._speaking(self, change, self.talk_time_ms, 0 if change else self._meter.last_segment_ms)

    def stop_speaking(self) -> None:
        """End a stretch of speech now (leaving, closing): its speaking_stopped, with its length, goes out."""
        if self._meter.speaking:
            self._speaking_change(self._meter.tick(time.monotonic() + self._meter.stop_hold))

    async def close(self) -> None:
        """Unpublish all tracks and close both peer connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.stop_speaking()
        await self.publisher.close()
        if self.subscriber is not None:
            await self.subscriber.close()
