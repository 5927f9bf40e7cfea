"""RFC 9457 problem details: the one place orchestrator errors become HTTP responses."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from orchestrator.errors import (
    AlreadyExistsError,
    AuthenticationError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RuleViolation,
    UnsupportedMediaTypeError,
)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE = "urn:classmesh:problem:"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
}


def problem(
    status: int,
    slug: str,
    detail: str,
    *,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": _TYPE + slug,
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if extra:
        body.update(extra)
    return web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def problem_from_exception(exc: BaseException) -> web.Response:
    """Translate any exception into a problem response (500, logged, for the unexpected ones)."""
    if isinstance(exc, InvalidInputError):
        extra = {"errors": [{"pointer": e.pointer, "detail": e.detail} for e in exc.errors]} if exc.errors else None
        slug = "invalid-input" if exc.status == 422 else "bad-request"
        return problem(exc.status, slug, exc.detail, extra=extra)
    if isinstance(exc, RuleViolation):
        return problem(
            exc.status,
            "rule-violation",
            exc.detail,
            title="Scheduling rule violated",
            extra={"code": exc.code, "conflicting_session_id": exc.conflicting_session_id, **exc.extra},
        )
    if isinstance(exc, NotFoundError):
        return problem(404, "not-found", str(exc))
    if isinstance(exc, AlreadyExistsError):
        return problem(409, "already-exists", str(exc))
    if isinstance(exc, InvalidStateError):
        return problem(409, "invalid-state", str(exc))
    if isinstance(exc, IdempotencyKeyReusedError):
        return problem(422, "idempotency-key-reused", str(exc))
    if isinstance(exc, IdempotencyKeyInFlightError):
        return problem(409, "idempotency-key-in-flight", str(exc))
    if isinstance(exc, AuthenticationError):
        return problem(401, "unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="classmesh"'})
    if isinstance(exc, PermissionDeniedError):
        return problem(403, "forbidden", str(exc))
    if isinstance(exc, PayloadTooLargeError):
        return problem(413, "payload-too-large", str(exc))
    if isinstance(exc, UnsupportedMediaTypeError):
        return problem(415, "unsupported-media-type", str(exc))
    if isinstance(exc, web.HTTPException):
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem(exc.status, "http-" + str(exc.status), detail or exc.reason, headers=headers)
    logger.exception("unhandled error in API request", exc_info=exc)
    return problem(500, "internal", "the orchestrator failed to handle this request; it has been logged")
