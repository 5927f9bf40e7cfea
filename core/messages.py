"""Wire messages between services, and the names of the channels and streams they travel on.

A message is a frozen dataclass registered under a ``type`` string; ``to_payload()`` gives the JSON object sent
on the bus and ``decode(payload)`` turns one back into its class, refusing unknown types and fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

# --- where messages go -------------------------------------------------------------------------------------
NODE_HEARTBEATS = "nodes.heartbeat"  # pub/sub: NodeHeartbeat from every media node, recorder and signaling
EVENTS_STREAM = "classmesh.events"  # durable stream: presence, talk time, recording progress, node events
ORCHESTRATOR_RPC = "orchestrator.rpc"  # request/reply: ensure a room is placed, ...


def node_rpc(node_id: str) -> str:
    """Request/reply channel of one media node (signaling -> node commands)."""
    return f"media.{node_id}"


def participant_channel(participant_id: str) -> str:
    """Pub/sub channel carrying a node's messages for one participant (node -> signaling)."""
    return f"participant.{participant_id}"


def recorder_rpc(worker_id: str) -> str:
    """Request/reply channel of one recorder worker (orchestrator -> worker: start/stop a recording job)."""
    return f"recorder.{worker_id}"


RECORDING_PROGRESS = "recording.progress"  # pub/sub: each running recording job's progress, every second


def recording_lease_key(job_id: str) -> str:
    """Key a worker holds (with a TTL it renews) while it runs a recording job; deleting it revokes the job."""
    return f"recording:{job_id}:lease"


def recording_uploaded_key(session_id: str, copy_id: str) -> str:
    """Set by a recorder worker (for a day) once every segment of a copy that waited in its spool after the copy's
    job ended is stored: the coordinator's durable answer to the job's ``uploads_pending``."""
    return f"recording:{session_id}:{copy_id}:uploaded"


def revoked_token_key(token_id: str) -> str:
    """Present (until the token would expire anyway) when a join token was revoked: signaling refuses it."""
    return f"token:{token_id}:revoked"


def room_key(room_id: str) -> str:
    """Key holding the node that hosts a room (room -> node map)."""
    return f"room:{room_id}:node"


# --- messages ----------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Any]] = {}
T = TypeVar("T")


class MessageError(ValueError):
    """A payload that is not a valid message."""


def message(type_name: str) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass as the wire message ``type_name``."""

    def register(cls: type[T]) -> type[T]:
        cls.TYPE = type_name  # type: ignore[attr-defined]
        _REGISTRY[type_name] = cls
        return cls

    return register


def encode(msg: Any) -> dict[str, Any]:
    """The JSON object for a registered message."""
    body = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    body["type"] = type(msg).TYPE
    return body


def decode(payload: Mapping[str, Any]) -> Any:
    """The message a payload encodes; ``MessageError`` for unknown types or fields."""
    type_name = payload.get("type")
    cls = _REGISTRY.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {type_name!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(payload) - names - {"type"}
    if unknown:
        raise MessageError(f"{type_name}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        return cls(**{k: v for k, v in payload.items() if k != "type"})
    except TypeError as exc:
        raise MessageError(f"{type_name}: {exc}") from None


@message("node.heartbeat")
@dataclass(frozen=True, slots=True)
class NodeHeartbeat:
    """Sent every second by each node. ``kind`` is media | recorder | signaling."""

    node_id: str
    kind: str
    region: str
    version: str
    state: str
    url: str
    capacity_streams: int = 0
    rooms: int = 0
    participants: int = 0
    streams: int = 0
    cpu: float = 0.0
    sent_at: float = 0.0
    room_ids: list[str] = field(default_factory=list)

    TYPE: ClassVar[str] = "node.heartbeat"


@message("presence")
@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """Something happened to a participant in a room (on EVENTS_STREAM).

    ``event`` is one of: joined, left, published, unpublished, speaking_started, speaking_stopped, quality,
    data (a chat message, hand raise or reaction, for engagement capture).
    """

    event: str
    room_id: str
    node_id: str
    participant_id: str
    identity: str
    role: str
    at: float
    details: dict[str, Any] = field(default_factory=dict)

    TYPE: ClassVar[str] = "presence"


def room_channel(room_id: str) -> str:
    """Pub/sub channel for control messages about a whole room (e.g. "moved" after a node failure)."""
    return f"room.{room_id}"
