"""``build_api_app``: the booking REST API as an aiohttp sub-application (mounted at ``/v1``).

Request path: metrics and error translation (``_edge``) -> ``Operation`` wrapper (auth, scope, input
validation, Idempotency-Key) -> handler. Every error leaves as ``application/problem+json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from orchestrator import metrics
from orchestrator.api.engagement import ENGAGEMENT_OPERATIONS
from orchestrator.api.exceptions import EXCEPTION_OPERATIONS
from orchestrator.api.handlers import OPERATIONS as BOOKING_OPERATIONS
from orchestrator.api.hooks import ApiHooks
from orchestrator.api.keys import authenticate, require_scope
from orchestrator.api.notifications import NOTIFICATION_OPERATIONS
from orchestrator.api.operations import Call, Operation, docs_page, openapi_document, read_body
from orchestrator.api.ops import MATCH_OPERATIONS, OPS_OPERATIONS
from orchestrator.api.problems import PROBLEM_JSON, problem, problem_from_exception
from orchestrator.api.recordings import RECORDING_OPERATIONS, SESSION_OPS_OPERATIONS
from orchestrator.api.reports import REPORT_OPERATIONS
from orchestrator.api.scheduling import SCHEDULING_OPERATIONS
from orchestrator.api.scheduling_services import SCHEDULING, SchedulingServices
from orchestrator.errors import (
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InvalidInputError,
)
from orchestrator.store import Store

STORE = web.AppKey("classmesh.api.store", Store)
HOOKS = web.AppKey("classmesh.api.hooks", ApiHooks)
OPENAPI = web.AppKey("classmesh.api.openapi", dict)

_IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}", re.ASCII)


@web.middleware
async def _edge(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except Exception as exc:  # translate at the edge; CancelledError (BaseException) passes through
        response = problem_from_exception(exc)
    route = _route_template(request)
    metrics.API_REQUESTS.labels(route, request.method, metrics.status_class(response.status)).inc()
    metrics.API_REQUEST_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
    return response


def _route_template(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or info.get("tail") is not None:
        return "unmatched"
    return str(resource.canonical)


def _bind(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        store = request.app[STORE]
        key = await authenticate(store, request.headers.get("Authorization"))
        require_scope(key, op.scope)
        idem = request.headers.get("Idempotency-Key") if op.method == "POST" else None
        if idem is None:
            return await _run(op, request, store, key)
        return await _idempotent(op, request, store, key, idem)

    handle.__name__ = op.operation_id
    return handle


async def _run(op: Operation, request: web.Request, store: Store, key: Any) -> web.StreamResponse:
    path, query, body = await op.parse(request)
    return await op.handler(Call(request, store, request.app[HOOKS], key, path, query, body))


async def _idempotent(op: Operation, request: web.Request, store: Store, key: Any, idem: str) -> web.StreamResponse:
    if not _IDEMPOTENCY_KEY_RE.fullmatch(idem):
        raise InvalidInputError("Idempotency-Key must be 1-255 printable ASCII characters", status=400)
    raw = await read_body(request)
    method_path = f"{request.method} {request.path}"
    digest = hashlib.sha256(method_path.encode() + b"\n" + raw).hexdigest()
    existing = await store.idempotency_reserve(key.key_id, idem, method_path, digest)
    if existing is not None:
        if existing.request_hash != digest:
            raise IdempotencyKeyReusedError(
                f"Idempotency-Key {idem!r} was already used with a different request ({existing.method_path})"
            )
        if existing.response_status is None:
            raise IdempotencyKeyInFlightError(f"a request with Idempotency-Key {idem!r} is still in progress")
        return _replay(existing.response_status, existing.response_body or "")
    try:
        response = await _run(op, request, store, key)
    except Exception as exc:
        response = problem_from_exception(exc)
    if response.status >= 500 or not isinstance(response, web.Response):
        await store.idempotency_release(key.key_id, idem)
        return response
    text = response.text or ""
    await store.idempotency_complete(key.key_id, idem, response.status, text)
    return response


def _replay(status: int, body: str) -> web.Response:
    headers = {"Idempotent-Replayed": "true"}
    if status == 204:
        return web.Response(status=204, headers=headers)
    ctype = PROBLEM_JSON if status >= 400 else "application/json"
    return web.Response(status=status, text=body, content_type=ctype, headers=headers)


def build_api_app(store: Store, *, hooks: ApiHooks | None = None) -> web.Application:
    """The REST API as an application to mount with ``parent.add_subapp("/v1", build_api_app(...))``.

    Serves ``openapi.json`` and ``docs`` without authentication; everything else needs an API key.
    """
    app = web.Application(middlewares=[_edge])
    app[STORE] = store
    app[HOOKS] = hooks = hooks or ApiHooks()
    app[SCHEDULING] = scheduling = SchedulingServices.build(store, hooks)
    app.on_cleanup.append(scheduling.on_cleanup)  # stops this replica's optimisation jobs
    # the operational endpoints exist only where the orchestrator's live state does
    operations = (
        *BOOKING_OPERATIONS,
        *NOTIFICATION_OPERATIONS,
        *(MATCH_OPERATIONS if hooks.match is not None else ()),
        *(OPS_OPERATIONS if hooks.ops is not None else ()),
        *(SESSION_OPS_OPERATIONS if hooks.ops is not None else ()),
        *RECORDING_OPERATIONS,
        *ENGAGEMENT_OPERATIONS,
        *EXCEPTION_OPERATIONS,
        *REPORT_OPERATIONS,
        *SCHEDULING_OPERATIONS,
    )
    doc = openapi_document(operations)
    app[OPENAPI] = doc
    page = docs_page(doc)
    openapi_text = json.dumps(doc, indent=1)

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(text=openapi_text, content_type="application/json")

    async def docs(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/docs", docs)
    templates: list[tuple[re.Pattern[str], str]] = []
    for op in operations:
        app.router.add_route(op.method, op.path, _bind(op))
        templates.append((re.compile("^" + re.sub(r"{\w+}", "[^/]+", op.path) + "$"), op.method))

    async def unmatched(request: web.Request) -> web.Response:
        path = "/" + request.match_info.get("tail", "")
        allowed = sorted({m for rx, m in templates if rx.match(path)})
        if allowed:
            return problem(
                405,
                "method-not-allowed",
                f"{request.method} is not allowed here; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return problem(404, "not-found", f"no API operation at {request.path}; see /v1/docs")

    # Last: answers every other path under the prefix, so those 404/405s are problem documents too.
    app.router.add_route("*", "/{tail:.*}", unmatched)
    return app
