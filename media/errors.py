"""Errors raised by the media data plane.

Every error has a stable ``code`` string that the node service copies onto the wire; the message is
for humans. Translate them to wire/HTTP errors only at the edge (media/node.py, signaling).
"""

from __future__ import annotations

from core.bus import BusError


class NodeError(BusError):
    """What a node (or its front) answers a bad or impossible request with: ``code`` travels back to the caller
    over the bus (``RemoteError.code``). ``MediaError``s become ``NodeError``s at the node's edge."""


class MediaError(Exception):
    """Root of every error raised by ``media``."""

    code: str = "media_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RoomFullError(MediaError):
    code = "room_full"


class RoomClosedError(MediaError):
    code = "room_closed"


class DuplicateParticipantError(MediaError):
    code = "duplicate_participant"


class UnknownParticipantError(MediaError):
    code = "unknown_participant"


class PermissionDeniedError(MediaError):
    code = "permission_denied"


class TrackLimitError(MediaError):
    code = "track_limit"


class NodeCapacityError(MediaError):
    code = "node_capacity"


class InvalidSdpError(MediaError):
    code = "invalid_sdp"


class NegotiationError(MediaError):
    code = "negotiation_error"


class InternalsChangedError(MediaError):
    """aiortc/aioice no longer have the private internals media/forwarding.py relies on."""

    code = "internals_changed"
