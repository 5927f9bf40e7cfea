"""Errors of the signaling service, rooted at ``SignalingError``.

Each carries the wire ``code`` sent to the browser in an ``error`` message. ``close_code`` is set when the
socket must be closed after the error is sent (authentication failures close with 4401); otherwise the
socket stays open and nothing has changed. Errors become wire messages only at the edge
(``signaling/connection.py``).
"""

from __future__ import annotations

# WebSocket close codes used by signaling (4000-4999 are free for applications).
CLOSE_AUTH_FAILED = 4401
CLOSE_REMOVED = 4403
CLOSE_RESUMED_ELSEWHERE = 4409
CLOSE_LEFT = 1000
CLOSE_SERVICE_RESTART = 1012


class SignalingError(Exception):
    """Root of every signaling error."""

    code: str = "internal"
    close_code: int | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ProtocolError(SignalingError):
    """A frame that is not a valid v1 message (bad_json, bad_message, unknown_type, too_large,
    out_of_order, unsupported_version)."""

    code = "bad_message"


class AuthError(SignalingError):
    """The join token was refused (token_invalid, token_expired, token_wrong_room, token_role_mismatch,
    token_revoked)."""

    code = "token_invalid"
    close_code = CLOSE_AUTH_FAILED


class PermissionDeniedError(SignalingError):
    code = "permission_denied"


class RateLimitedError(SignalingError):
    code = "rate_limited"


class SessionExpiredError(SignalingError):
    code = "session_expired"


class PlacementUnavailableError(SignalingError):
    """No node could be found for the room (orchestrator down, no capacity, unknown region)."""

    code = "placement_unavailable"


class NodeUnavailableError(SignalingError):
    """The node hosting the room did not answer."""

    code = "node_unavailable"


class NodeRejectedError(SignalingError):
    """The node answered with an error; ``code`` is the node's (room_full, track_limit, ...)."""

    code = "node_error"


class DrainingError(SignalingError):
    """This signaling process is draining and takes no new sessions."""

    code = "signaling_draining"
