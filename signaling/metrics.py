"""Prometheus metrics of the signaling service (``classmesh_signaling_*``).

Labels are bounded: message types come from the fixed v1 set (anything else counts as ``invalid``), error
codes from ``ERROR_CODES`` (anything else counts as ``other``). Room and participant ids never become labels.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from signaling.protocol import CLIENT_TYPES

CONNECTIONS = Gauge("classmesh_signaling_connections", "Open signaling WebSockets.")
SESSIONS = Gauge(
    "classmesh_signaling_sessions", "Signaling sessions held by this process (attached, detached).", ["state"]
)
MESSAGES = Counter("classmesh_signaling_messages_total", "Client messages received, by type.", ["type"])
ERRORS = Counter("classmesh_signaling_errors_total", "Error messages sent to clients, by code.", ["code"])
RESUMES = Counter("classmesh_signaling_resumes_total", "Resume attempts, by result (resumed, expired).", ["result"])
EXPIRED = Counter("classmesh_signaling_sessions_expired_total", "Sessions that expired without a resume (leave sent).")
MOVES = Counter("classmesh_signaling_room_moves_total", "Sessions that followed their room to another node.")

ERROR_CODES = frozenset(
    {
        "bad_json",
        "bad_message",
        "unknown_type",
        "too_large",
        "out_of_order",
        "unsupported_version",
        "permission_denied",
        "rate_limited",
        "token_invalid",
        "token_expired",
        "token_wrong_room",
        "token_role_mismatch",
        "token_revoked",
        "session_expired",
        "placement_unavailable",
        "node_unavailable",
        "signaling_draining",
        "room_full",
        "track_limit",
        "unknown_participant",
        "unknown_room",
        "bad_request",
        "node_draining",
        "node_full",
        "internal",
    }
)


def count_message(message_type: str) -> None:
    MESSAGES.labels(message_type if message_type in CLIENT_TYPES else "invalid").inc()


def count_error(code: str) -> None:
    ERRORS.labels(code if code in ERROR_CODES else "other").inc()
