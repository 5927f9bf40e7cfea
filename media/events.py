"""Values exchanged with the node service: participant descriptions and room events.

Events are frozen dataclasses delivered synchronously through ``Room(on_event=...)``; the callback
must not block (the node service puts them on its bus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Quality = Literal["excellent", "good", "poor"]


@dataclass(frozen=True, slots=True)
class ParticipantInfo:
    """Who a participant is and what it may do. ``role`` is instructor|student|observer|recorder."""

    participant_id: str
    identity: str
    name: str
    role: str
    can_publish: frozenset[str]  # subset of {"audio", "video", "screen"}
    can_subscribe: bool = True
    hidden: bool = False
    #: where a trusted subscriber (a recorder) takes plain RTP instead of a peer connection (see media.plain)
    plain: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class ParticipantJoined:
    room_id: str
    participant_id: str
    info: ParticipantInfo


@dataclass(frozen=True, slots=True)
class ParticipantLeft:
    room_id: str
    participant_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class TrackPublished:
    room_id: str
    participant_id: str
    track_id: str
    kind: str
    source: str


@dataclass(frozen=True, slots=True)
class TrackUnpublished:
    room_id: str
    participant_id: str
    track_id: str
    kind: str
    source: str


@dataclass(frozen=True, slots=True)
class SubscriberOffer:
    """An SDP offer for the participant's subscriber peer connection; relay it and return the answer
    through ``Participant.subscriber_answer``. See ``media.subscriber`` for the msid format."""

    room_id: str
    participant_id: str
    sdp: str


@dataclass(frozen=True, slots=True)
class PlainTracks:
    """What a plain-RTP subscriber receives now: output label -> publisher, source, kind, track, SSRC, codecs."""

    room_id: str
    participant_id: str
    tracks: dict[str, dict[str, object]]


@dataclass(frozen=True, slots=True)
class SpeakingChanged:
    room_id: str
    participant_id: str
    speaking: bool
    talk_time_ms: int  # this participant's talk time on this node so far
    segment_ms: int = 0  # when speaking stops: how long this stretch of speech lasted


@dataclass(frozen=True, slots=True)
class ConnectionQuality:
    room_id: str
    participant_id: str
    quality: Quality
    loss: float
    rtt_ms: float | None


RoomEvent = (
    ParticipantJoined
    | ParticipantLeft
    | TrackPublished
    | TrackUnpublished
    | SubscriberOffer
    | PlainTracks
    | SpeakingChanged
    | ConnectionQuality
)
