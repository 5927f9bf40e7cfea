"""A room: participants and the tracks forwarded between them.

States: open → closed. ``close()`` is idempotent and cascades: participants close their
connections, which close their tracks. Events go to ``on_event`` synchronously (see
``media.events``). Hidden participants (recorders) receive every track but are never announced
and never forwarded; they do not take a seat in ``max_participants``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration

from . import events as ev
from .errors import DuplicateParticipantError, RoomClosedError, RoomFullError, UnknownParticipantError
from .events import ParticipantInfo, Quality, RoomEvent
from .metrics import NodeMetrics, bind
from .participant import Participant
from .track import NodeLimits, PublishedTrack

__all__ = ["NodeLimits", "Participant", "ParticipantInfo", "Room", "RoomSettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoomSettings:
    max_participants: int = 50
    max_tracks: int = 100
    #: seconds a subscriber's REMB must stay below its video bitrate before video pauses
    remb_pause_after: float = 2.0
    #: seconds the estimate must stay at 1.2x the video bitrate before video resumes
    remb_resume_after: float = 1.0


class Room:
    def __init__(
        self,
        room_id: str,
        settings: RoomSettings,
        *,
        node_id: str = "node",
        on_event: Callable[[RoomEvent], None],
        limits: NodeLimits | None = None,
        rtc_configuration: RTCConfiguration | None = None,
    ) -> None:
        self.room_id = room_id
        self.settings = settings
        self.node_id = node_id
        self.limits = limits
        self.rtc_configuration = rtc_configuration
        self.metrics: NodeMetrics = bind(node_id)
        self._on_event = on_event
        self._participants: dict[str, Participant] = {}
        self._closed = False
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics.rooms.inc()

    @property
    def participants(self) -> Mapping[str, Participant]:
        return dict(self._participants)

    @property
    def closed(self) -> bool:
        return self._closed

    def participant(self, participant_id: str) -> Participant:
        try:
            return self._participants[participant_id]
        except KeyError:
            raise UnknownParticipantError(f"participant {participant_id!r} is not in room {self.room_id!r}") from None

    def published_track_count(self) -> int:
        return sum(len(p.publisher.tracks) for p in self._participants.values())

    async def join(self, info: ParticipantInfo) -> Participant:
        if self._closed:
            raise RoomClosedError(f"room {self.room_id!r} is closed")
        if info.participant_id in self._participants:
            raise DuplicateParticipantError(f"participant {info.participant_id!r} already joined")
        seated = sum(1 for p in self._participants.values() if not p.info.hidden)
        if not info.hidden and seated >= self.settings.max_participants:
            raise RoomFullError(f"room {self.room_id!r} is full ({self.settings.max_participants})")
        participant = Participant(self, info)
        self._participants[info.participant_id] = participant
        self.metrics.participants.inc()
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name=f"room-tick:{self.room_id}")
        logger.info("room=%s participant=%s role=%s joined", self.room_id, info.participant_id, info.role)
        if not info.hidden:
            self._emit(ev.ParticipantJoined(self.room_id, info.participant_id, info))
        if participant.subscriber is not None:
            if participant.subscriber.plain:
                try:
                    await participant.subscriber.open_plain()
                except BaseException:
                    self._participants.pop(info.participant_id, None)
                    self.metrics.participants.dec()
                    await participant.close()
                    raise
            added = False
            for other in self._participants.values():
                if other is participant or other.info.hidden:
                    continue
                for track in other.publisher.tracks:
                    added |= participant.subscriber.add_track(track)
            if added:
                await participant.subscriber.negotiate()
        return participant

    async def leave(self, participant_id: str, reason: str = "left") -> None:
        participant = self._participants.get(participant_id)
        if participant is None:
            return
        await participant.close()
        self._participants.pop(participant_id, None)
        self.metrics.participants.dec()
        logger.info("room=%s participant=%s left reason=%s", self.room_id, participant_id, reason)
        if not participant.info.hidden:
            self._emit(ev.ParticipantLeft(self.room_id, participant_id, reason))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for participant_id in list(self._participants):
            await self.leave(participant_id, reason="room_closed")
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.metrics.rooms.dec()
        logger.info("room=%s closed", self.room_id)

    def stats(self) -> dict[str, Any]:
        tracks = self.published_track_count()
        forwarded = sum(p.subscriber.forwarded for p in self._participants.values() if p.subscriber is not None)
        return {
            "participants": sum(1 for p in self._participants.values() if not p.info.hidden),
            "hidden_participants": sum(1 for p in self._participants.values() if p.info.hidden),
            "published_tracks": tracks,
            "forwarded_tracks": forwarded,
        }

    # -- called by participants -----------------------------------------------------------------

    def _track_published(self, publisher: Participant, track: PublishedTrack) -> None:
        if publisher.info.hidden:
            return
        self._emit(ev.TrackPublished(self.room_id, publisher.participant_id, track.track_id, track.kind, track.source))
        for other in self._participants.values():
            if other is publisher or other.subscriber is None:
                continue
            if other.subscriber.add_track(track):
                self._negotiate(other)

    def _track_unpublished(self, publisher: Participant, track: PublishedTrack) -> None:
        if publisher.info.hidden:
            return
        self._emit(
            ev.TrackUnpublished(self.room_id, publisher.participant_id, track.track_id, track.kind, track.source)
        )
        for other in self._participants.values():
            if other is publisher or other.subscriber is None:
                continue
            if other.subscriber.remove_track(track):
                self._negotiate(other)

    def _connection_failed(self, participant: Participant, state: str) -> None:
        """A peer connection failed or was closed by the client: the participant leaves by itself
        (``ParticipantLeft`` with reason ``connection_failed`` or ``connection_closed``)."""
        if self._closed or participant.participant_id not in self._participants:
            return
        task = asyncio.create_task(
            self.leave(participant.participant_id, reason=f"connection_{state}"),
            name=f"leave:{self.room_id}:{participant.participant_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _subscriber_offer(self, participant: Participant, sdp: str) -> None:
        self._emit(ev.SubscriberOffer(self.room_id, participant.participant_id, sdp))

    def _plain_tracks(self, participant: Participant, tracks: dict[str, dict[str, object]]) -> None:
        self._emit(ev.PlainTracks(self.room_id, participant.participant_id, tracks))

    def _speaking(self, participant: Participant, speaking: bool, talk_time_ms: int, segment_ms: int) -> None:
        if not participant.info.hidden:
            self._emit(ev.SpeakingChanged(self.room_id, participant.participant_id, speaking, talk_time_ms, segment_ms))

    def _quality(self, participant: Participant, quality: Quality, loss: float, rtt_ms: float | None) -> None:
        self._emit(ev.ConnectionQuality(self.room_id, participant.participant_id, quality, loss, rtt_ms))

    # -- internals ---------------------------------------------------------------------------------

    def _negotiate(self, participant: Participant) -> None:
        if participant.subscriber is None or self._closed:
            return
        task = asyncio.create_task(
            participant.subscriber.negotiate(), name=f"negotiate:{self.room_id}:{participant.participant_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._negotiation_done)

    def _negotiation_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("room=%s subscriber negotiation failed", self.room_id, exc_info=task.exception())

    def _emit(self, event: RoomEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            logger.exception("room=%s event handler failed for %s", self.room_id, type(event).__name__)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for participant in list(self._participants.values()):
                try:
                    participant.tick(now)
                except Exception:
                    logger.exception("room=%s participant=%s tick failed", self.room_id, participant.participant_id)
