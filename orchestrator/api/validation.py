"""A small validator for the JSON Schema subset the API's OpenAPI document uses.

The request schemas served at ``/v1/openapi.json`` are the very dicts this module checks bodies
against, so the document cannot drift from the behaviour. Supported keywords: ``$ref`` (to
``#/components/schemas``), ``type`` (string or list), ``properties``, ``required``,
``additionalProperties: false``, ``minProperties``, ``enum``, ``minLength``, ``maxLength``, ``pattern``,
``format: date-time``, ``minimum``, ``maximum``, ``items``, ``minItems``, ``maxItems``, ``uniqueItems``.
Beyond the schema, no string may contain NUL or an unpaired surrogate.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from orchestrator.errors import FieldError

Schema = dict[str, Any]

# No text column on either backend can hold these (PostgreSQL rejects NUL; UTF-8 cannot encode lone
# surrogates), so every string in every request is refused if it contains one.
_FORBIDDEN_CHARS = re.compile("[\x00\ud800-\udfff]")


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    # ECMA-262 "$" never matches before a trailing newline; Python's does unless written as "\\Z".
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + "\\Z"
    return re.compile(pattern, re.ASCII)


def parse_datetime(value: str) -> datetime | None:
    """RFC 3339 date-time with an explicit offset, as aware UTC; None when it is not one."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", value):
        return None
    text = value.upper()
    if "." in text:  # Python keeps at most 6 fractional digits
        head, _, rest = text.partition(".")
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = head + "." + digits.group()[:6].ljust(6, "0") + rest[digits.end() :]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC)


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    raise ValueError(f"unsupported schema type {kind!r}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Validator:
    """Validates instances against schemas that may ``$ref`` into ``components``."""

    def __init__(self, components: dict[str, Schema]) -> None:
        self._components = components

    def validate(self, value: Any, schema: Schema, pointer: str = "") -> list[FieldError]:
        errors: list[FieldError] = []
        self._check(value, schema, pointer, errors)
        return errors

    def resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self._components[name]
        return schema

    def _check(self, value: Any, schema: Schema, ptr: str, errors: list[FieldError]) -> None:
        schema = self.resolve(schema)
        where = ptr or "/"
        kinds = schema.get("type")
        if kinds is not None:
            kinds_list = [kinds] if isinstance(kinds, str) else list(kinds)
            if not any(_type_ok(value, k) for k in kinds_list):
                wanted = " or ".join("null" if k == "null" else f"a {k}" for k in kinds_list)
                errors.append(FieldError(where, f"must be {wanted}, not {_describe(value)}"))
                return
        if value is None:
            return
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(repr(v) for v in schema["enum"] if v is not None)
            errors.append(FieldError(where, f"must be one of {allowed}"))
            return
        if isinstance(value, str):
            self._check_string(value, schema, where, errors)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                errors.append(FieldError(where, f"must be >= {schema['minimum']}"))
            if "maximum" in schema and value > schema["maximum"]:
                errors.append(FieldError(where, f"must be <= {schema['maximum']}"))
        elif isinstance(value, list):
            self._check_array(value, schema, ptr, errors)
        elif isinstance(value, dict):
            self._check_object(value, schema, ptr, errors)

    def _check_string(self, value: str, schema: Schema, where: str, errors: list[FieldError]) -> None:
        if _FORBIDDEN_CHARS.search(value):
            errors.append(FieldError(where, "must not contain NUL or unpaired surrogate characters"))
            return
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(FieldError(where, f"must be at least {schema['minLength']} characters long"))
            return
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(FieldError(where, f"must be at most {schema['maxLength']} characters long"))
            return
        if "pattern" in schema and not _regex(schema["pattern"]).search(value):
            errors.append(FieldError(where, f"must match the pattern {schema['pattern']}"))
            return
        if schema.get("format") == "date-time" and parse_datetime(value) is None:
            errors.append(FieldError(where, "must be an RFC 3339 date-time with offset, e.g. 2030-01-07T09:00:00Z"))

    def _check_array(self, value: list[Any], schema: Schema, ptr: str, errors: list[FieldError]) -> None:
        where = ptr or "/"
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(FieldError(where, f"must have at least {schema['minItems']} items"))
            return
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(FieldError(where, f"must have at most {schema['maxItems']} items"))
            return
        if "items" in schema:
            for i, item in enumerate(value):
                self._check(item, schema["items"], f"{ptr}/{i}", errors)
        if schema.get("uniqueItems"):
            seen: list[Any] = []
            for item in value:
                if item in seen:
                    errors.append(FieldError(where, f"items must be unique ({item!r} repeats)"))
                    return
                seen.append(item)

    def _check_object(self, value: dict[str, Any], schema: Schema, ptr: str, errors: list[FieldError]) -> None:
        props: dict[str, Schema] = schema.get("properties", {})
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append(FieldError(ptr or "/", f"must have at least {schema['minProperties']} field(s)"))
        for name in schema.get("required", []):
            if name not in value:
                errors.append(FieldError(f"{ptr}/{_escape(name)}", "is required"))
        for name, item in value.items():
            child = f"{ptr}/{_escape(name)}"
            if name in props:
                self._check(item, props[name], child, errors)
            elif schema.get("additionalProperties") is False:
                errors.append(FieldError(child, "is not a known field"))


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
