"""Errors raised by the orchestrator, rooted at :class:`OrchestratorError`.

They carry domain meaning only; ``orchestrator/api`` translates them to RFC 9457 problem documents at
the HTTP edge (convention 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class OrchestratorError(Exception):
    """Base class of every error the orchestrator raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid input field: a JSON pointer into the request body and what is wrong with it."""

    pointer: str
    detail: str


class InvalidInputError(OrchestratorError):
    """The caller sent something the orchestrator cannot accept.

    ``status`` is 422 for a well-formed request with invalid content and 400 for one that cannot be
    read at all (malformed JSON, bad query parameters, a foreign cursor).
    """

    def __init__(self, detail: str, errors: list[FieldError] | None = None, *, status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors: list[FieldError] = errors or []
        self.status = status


class NotFoundError(OrchestratorError):
    """A referenced resource does not exist."""

    def __init__(self, kind: str, resource_id: str) -> None:
        super().__init__(f"{kind} {resource_id!r} does not exist")
        self.kind = kind
        self.resource_id = resource_id


class AlreadyExistsError(OrchestratorError):
    """A resource with the caller-chosen id already exists."""

    def __init__(self, kind: str, resource_id: str) -> None:
        super().__init__(f"{kind} {resource_id!r} already exists")
        self.kind = kind
        self.resource_id = resource_id


class InvalidStateError(OrchestratorError):
    """The operation is not allowed in the current state (e.g. rescheduling a cancelled booking)."""


@dataclass
class RuleViolation(OrchestratorError):
    """A booking breaks a scheduling rule.

    ``code`` is a stable machine-readable rule name, the scheduling engine's ``RuleCode`` values
    (``instructor_double_booked``, ``outside_availability``, ``not_qualified``, ...).
    ``conflicting_session_id`` names the session that holds the slot when the rule is about a clash.
    ``status`` is 409 for conflicts with existing state and 422 for requests that can never succeed
    as written.
    """

    code: str
    detail: str
    status: int = 409
    conflicting_session_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class SlotConflictError(RuleViolation):
    """The database refused an occupancy claim: a person is already busy in that slot."""

    def __init__(self, person_kind: str, person_id: str, conflicting_session_id: str | None) -> None:
        who = "instructor" if person_kind == "instructor" else "student"
        super().__init__(
            code=f"{who}_double_booked",  # the scheduling engine's RuleCode values
            detail=f"{who} {person_id!r} is already booked at that time"
            + (f" (session {conflicting_session_id})" if conflicting_session_id else ""),
            status=409,
            conflicting_session_id=conflicting_session_id,
            extra={"person_kind": person_kind, "person_id": person_id},
        )


class IdempotencyKeyReusedError(OrchestratorError):
    """An Idempotency-Key was reused with a different request."""


class IdempotencyKeyInFlightError(OrchestratorError):
    """A request with the same Idempotency-Key is still being processed."""


class PayloadTooLargeError(OrchestratorError):
    """The request body exceeds the API's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the {limit} byte limit")
        self.limit = limit


class UnsupportedMediaTypeError(OrchestratorError):
    """The request body is not JSON."""


class AuthenticationError(OrchestratorError):
    """Missing, malformed, unknown or revoked API key."""


class PermissionDeniedError(OrchestratorError):
    """The API key lacks the scope an operation needs."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"this API key lacks the {scope!r} scope")
        self.scope = scope
