"""Route declarations: each ``Operation`` is both an aiohttp route and an OpenAPI operation.

``Operation.bind`` wraps a handler so that path ids, query parameters and the JSON body are checked
against the same schemas the OpenAPI document publishes before the handler runs.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.api.hooks import ApiHooks
from orchestrator.api.schemas import COMPONENTS, ID, Schema, ref
from orchestrator.api.validation import Validator, parse_datetime
from orchestrator.errors import (
    FieldError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from orchestrator.store import ApiKey, Store

MAX_BODY_BYTES = 256 * 1024
BODY_KEY = web.RequestKey("classmesh.body", bytes)

VALIDATOR = Validator(COMPONENTS)


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    schema: Schema
    description: str = ""


@dataclass(slots=True)
class Call:
    """Everything a handler needs, already validated."""

    request: web.Request
    store: Store
    hooks: ApiHooks
    key: ApiKey
    path: dict[str, str]
    query: dict[str, Any]
    body: Any


Handler = Callable[[Call], Awaitable[web.StreamResponse]]

LIMIT = QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "page size (max 200)")
CURSOR = QueryParam("cursor", {"type": "string", "minLength": 1, "maxLength": 1000}, "next_cursor of the last page")
PAGING = (LIMIT, CURSOR)


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    scope: str
    handler: Handler
    response: str | None
    status: int = 200
    request: str | None = None
    request_required: bool = True
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = ()
    description: str = ""
    binary: str | None = None  # media type of a file response (then ``response`` is None)
    path_params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_params", tuple(re.findall(r"{(\w+)}", self.path)))

    def error_statuses(self) -> list[int]:
        codes = {400, 401, 403, *self.errors}
        if self.path_params:
            codes.add(404)
        if self.request:
            codes |= {413, 415, 422}
        if self.method == "POST":
            codes |= {409, 422}  # Idempotency-Key in flight / reused with another body
        return sorted(codes)

    # ------------------------------------------------------------------ OpenAPI

    def to_openapi(self) -> dict[str, Any]:
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": ID} for p in self.path_params
        ]
        params += [
            {
                "name": q.name,
                "in": "query",
                "required": False,
                "schema": q.schema,
                "description": q.description,
            }
            for q in self.query
        ]
        if self.method == "POST":
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": r"^[\x21-\x7e]+$",
                    },
                    "description": "repeat a POST safely: same key and body returns the stored response",
                }
            )
        responses: dict[str, Any] = {}
        if self.binary is not None:
            content = {self.binary: {"schema": {"type": "string", "contentMediaType": self.binary}}}
            responses[str(self.status)] = {"description": "the file", "content": content}
            responses["206"] = {"description": "the requested byte range", "content": content}
        elif self.response is None:
            responses[str(self.status)] = {"description": "done"}
        else:
            responses[str(self.status)] = {
                "description": "success",
                "content": {"application/json": {"schema": ref(self.response)}},
            }
        for code in self.error_statuses():
            responses[str(code)] = {"$ref": f"#/components/responses/Problem{code}"}
        op: dict[str, Any] = {
            "operationId": self.operation_id,
            "summary": self.summary,
            "tags": [self.tag],
            "parameters": params,
            "responses": responses,
            "x-scope": self.scope,
        }
        desc = self.description + (f"\n\nRequires scope `{self.scope}` (or `admin`)." if self.scope else "")
        op["description"] = desc.strip()
        if self.request:
            op["requestBody"] = {
                "required": self.request_required,
                "content": {"application/json": {"schema": ref(self.request)}},
            }
        return op

    # ------------------------------------------------------------------ request pipeline

    async def parse(self, request: web.Request) -> tuple[dict[str, str], dict[str, Any], Any]:
        path: dict[str, str] = {}
        for name in self.path_params:
            value = request.match_info.get(name, "")
            if VALIDATOR.validate(value, ID):
                raise NotFoundError(name.removesuffix("_id").replace("_", " "), value)
            path[name] = value
        return path, self._parse_query(request), await self._parse_body(request)

    def _parse_query(self, request: web.Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        errors: list[FieldError] = []
        known = {q.name for q in self.query}
        for name in sorted(set(request.query) - known):
            errors.append(FieldError(name[:100], "is not a query parameter of this operation"))
        for q in self.query:
            values = request.query.getall(q.name, [])
            if not values:
                if "default" in q.schema:
                    out[q.name] = q.schema["default"]
                continue
            if len(values) > 1:
                errors.append(FieldError(q.name, "must be given at most once"))
                continue
            raw = values[0]
            value: Any = raw
            kinds = q.schema.get("type")
            if kinds == "integer":
                if not re.fullmatch(r"-?\d{1,18}", raw):
                    errors.append(FieldError(q.name, "must be an integer"))
                    continue
                value = int(raw)
            problems = VALIDATOR.validate(value, q.schema, q.name)
            if problems:
                errors += problems
                continue
            if q.schema.get("format") == "date-time":
                value = parse_datetime(raw)
            out[q.name] = value
        if errors:
            raise InvalidInputError("invalid query parameters", errors, status=400)
        return out

    async def _parse_body(self, request: web.Request) -> Any:
        if not self.request:
            return None
        raw = await read_body(request)
        if not raw.strip():
            if self.request_required:
                raise InvalidInputError("this operation needs a JSON request body", status=400)
            return {}
        ctype = request.headers.get("Content-Type", "")
        mime = ctype.split(";", 1)[0].strip().lower()
        if mime != "application/json" and not mime.endswith("+json"):
            raise UnsupportedMediaTypeError(f"send the body as application/json, not {mime or 'no content type'!r}")
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise InvalidInputError("the request body is not valid UTF-8", status=400) from None
        except (ValueError, RecursionError) as exc:
            raise InvalidInputError(f"malformed JSON body: {exc}", status=400) from None
        errors = VALIDATOR.validate(body, ref(self.request))
        if errors:
            raise InvalidInputError(f"the {self.request} body is invalid", errors)
        return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_body(request: web.Request) -> bytes:
    """The request body, read once and at most ``MAX_BODY_BYTES`` long (else 413)."""
    cached = request.get(BODY_KEY)
    if cached is not None:
        return cached
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLargeError(MAX_BODY_BYTES)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLargeError(MAX_BODY_BYTES)
        chunks.append(chunk)
    body = b"".join(chunks)
    request[BODY_KEY] = body
    return body


# ---------------------------------------------------------------------- document and docs page


def openapi_document(operations: Sequence[Operation]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = op.to_openapi()
    statuses = sorted({c for op in operations for c in op.error_statuses()})
    responses = {
        f"Problem{code}": {
            "description": f"problem details ({code})",
            "content": {"application/problem+json": {"schema": ref("Problem")}},
        }
        for code in statuses
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "classmesh orchestrator API",
            "version": "1.0.0",
            "description": "Bookings in, classrooms out. See docs/api.md for the integration guide.",
        },
        "servers": [{"url": "/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "responses": responses,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key: cm_<id>_<secret>"}
            },
        },
    }


def docs_page(doc: dict[str, Any]) -> str:
    """A server-rendered HTML page listing every operation and schema (no JavaScript)."""
    e = html.escape
    rows: list[str] = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            req = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            req_name = req.get("$ref", "").rsplit("/", 1)[-1]
            codes = ", ".join(op["responses"])
            params = ", ".join(f"{p['name']} ({p['in']})" for p in op["parameters"])
            rows.append(
                f"<tr id='{e(op['operationId'])}'><td><code>{e(method.upper())}</code></td>"
                f"<td><code>/v1{e(path)}</code></td><td>{e(op['summary'])}</td>"
                f"<td><code>{e(op.get('x-scope', ''))}</code></td><td>{e(params)}</td>"
                + (f"<td><a href='#schema-{e(req_name)}'>{e(req_name)}</a></td>" if req_name else "<td></td>")
                + f"<td>{e(codes)}</td></tr>"
            )
    schemas = [
        f"<h3 id='schema-{e(name)}'>{e(name)}</h3><pre>{e(json.dumps(schema, indent=2))}</pre>"
        for name, schema in doc["components"]["schemas"].items()
    ]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(doc['info']['title'])}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .5em;vertical-align:top}"
        "pre{background:#f6f6f6;padding:.5em;overflow:auto}</style></head><body>"
        f"<h1>{e(doc['info']['title'])} {e(doc['info']['version'])}</h1>"
        f"<p>{e(doc['info']['description'])} Machine-readable: <a href='openapi.json'>openapi.json</a>. "
        "Authenticate with <code>Authorization: Bearer cm_...</code>; errors are "
        "<code>application/problem+json</code> (RFC 9457).</p>"
        "<h2>Operations</h2><table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Scope</th>"
        "<th>Parameters</th><th>Body</th><th>Responses</th></tr>"
        + "".join(rows)
        + "</table><h2>Schemas</h2>"
        + "".join(schemas)
        + "</body></html>"
    )
