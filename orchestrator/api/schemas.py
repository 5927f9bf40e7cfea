"""JSON Schemas of the API's request and response bodies (``components.schemas`` of the OpenAPI doc).

Request schemas are enforced by ``validation.Validator``; response schemas describe what
``orchestrator.store.codec`` produces and are checked by the schemathesis test.
"""

from __future__ import annotations

from typing import Any

from orchestrator.store.outbox import EVENT_TYPES

Schema = dict[str, Any]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
HHMM_PATTERN = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,255}$"

ID: Schema = {"type": "string", "pattern": ID_PATTERN, "maxLength": 64}
DATETIME: Schema = {"type": "string", "format": "date-time"}
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 200}
EMAIL: Schema = {"type": "string", "pattern": EMAIL_PATTERN, "maxLength": 320}
TZ: Schema = {"type": "string", "minLength": 1, "maxLength": 64, "description": "IANA time zone name"}
LEVEL: Schema = {"type": "integer", "minimum": 1, "maximum": 5}
SCOPES = (
    "admin",
    "directory:read",
    "directory:write",
    "bookings:read",
    "bookings:write",
    "sessions:read",
    "sessions:write",
    "webhooks:manage",
    "ops:read",
)


def nullable(schema: Schema) -> Schema:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


def obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
        **extra,
    }


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def page_of(name: str) -> Schema:
    return obj(
        {
            "items": {"type": "array", "items": ref(name)},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "pass as ?cursor= to get the next page; null on the last page",
            },
        },
        ["items", "next_cursor"],
    )


_qualification = obj({"subject_id": ID, "max_level": LEVEL}, ["subject_id", "max_level"])
_level = obj({"subject_id": ID, "level": LEVEL}, ["subject_id", "level"])
_window = obj(
    {
        "weekday": {"type": "integer", "minimum": 0, "maximum": 6, "description": "0 = Monday"},
        "start": {"type": "string", "pattern": HHMM_PATTERN},
        "end": {"type": "string", "pattern": HHMM_PATTERN},
    },
    ["weekday", "start", "end"],
)
_exception = obj(
    {"start": DATETIME, "end": DATETIME, "reason": {"type": "string", "maxLength": 500}},
    ["start", "end"],
)
_cap = {"type": ["integer", "null"], "minimum": 1, "maximum": 1000}

_instructor_fields: dict[str, Schema] = {
    "name": NAME,
    "email": EMAIL,
    "time_zone": TZ,
    "qualifications": {"type": "array", "items": ref("Qualification"), "maxItems": 100},
    "weekly_availability": {"type": "array", "items": ref("WeeklyWindow"), "maxItems": 100},
    "exceptions": {"type": "array", "items": ref("AvailabilityException"), "maxItems": 500},
    "buffer_minutes": {"type": "integer", "minimum": 0, "maximum": 240, "description": "multiple of 5"},
    "max_sessions_per_day": _cap,
    "max_sessions_per_week": _cap,
    "preferred_student_ids": {"type": "array", "items": ID, "maxItems": 500, "uniqueItems": True},
}

_student_fields: dict[str, Schema] = {
    "name": NAME,
    "time_zone": TZ,
    "country": {"type": ["string", "null"], "pattern": "^[A-Z]{2}$", "description": "ISO 3166-1 alpha-2"},
    "latitude": {"type": ["number", "null"], "minimum": -90, "maximum": 90},
    "longitude": {"type": ["number", "null"], "minimum": -180, "maximum": 180},
    "guardian_name": nullable(NAME),
    "guardian_email": nullable(EMAIL),
    "levels": {"type": "array", "items": ref("Level"), "maxItems": 100},
    "preferred_instructor_ids": {"type": "array", "items": ID, "maxItems": 500, "uniqueItems": True},
}

_booking_fields: dict[str, Schema] = {
    "subject_id": ID,
    "student_ids": {"type": "array", "items": ID, "minItems": 1, "maxItems": 500, "uniqueItems": True},
    "instructor_id": nullable(ID) | {"description": "null asks the scheduling engine to choose"},
    "start": DATETIME | {"description": "UTC start on a 5-minute boundary"},
    "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 720, "description": "multiple of 5"},
    "rrule": {
        "type": ["string", "null"],
        "maxLength": 500,
        "description": "RFC 5545 RRULE, e.g. FREQ=WEEKLY;COUNT=10",
    },
    "recording": {"type": "boolean"},
    "notes": {"type": "string", "maxLength": 5000},
    "curriculum_unit": {"type": ["string", "null"], "maxLength": 200},
}

_session_props: dict[str, Schema] = {
    "session_id": ID,
    "booking_id": ID,
    "occurrence_index": {"type": "integer", "minimum": 0},
    "start": DATETIME,
    "end": DATETIME,
    "instructor_id": ID,
    "student_ids": {"type": "array", "items": ID},
    "subject_id": ID,
    "status": {"type": "string", "enum": ["scheduled", "provisioned", "live", "ended", "cancelled"]},
    "room_id": {"type": ["string", "null"]},
    "region": {"type": ["string", "null"]},
    "node_id": {"type": ["string", "null"]},
    "recording": {"type": "boolean"},
    "curriculum_unit": {"type": ["string", "null"]},
}

_booking_props: dict[str, Schema] = {
    "booking_id": ID,
    "subject_id": ID,
    "student_ids": {"type": "array", "items": ID},
    "instructor_id": nullable(ID),
    "start": DATETIME,
    "duration_minutes": {"type": "integer"},
    "rrule": {"type": ["string", "null"]},
    "recording": {"type": "boolean"},
    "notes": {"type": "string"},
    "status": {"type": "string", "enum": ["active", "cancelled"]},
    "curriculum_unit": {"type": ["string", "null"]},
    "created_at": DATETIME,
    "updated_at": DATETIME,
}

_subscription_props: dict[str, Schema] = {
    "subscription_id": ID,
    "url": {"type": "string"},
    "event_types": {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
    "active": {"type": "boolean"},
    "created_at": DATETIME,
    "updated_at": DATETIME,
}

_event_types_in: Schema = {
    "type": "array",
    "items": {"type": "string", "enum": list(EVENT_TYPES)},
    "uniqueItems": True,
    "maxItems": len(EVENT_TYPES),
    "description": "empty = every event type",
}
_url_in: Schema = {"type": "string", "pattern": r"^https?://[^\s]+$", "maxLength": 2000}

COMPONENTS: dict[str, Schema] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": obj({"pointer": {"type": "string"}, "detail": {"type": "string"}}, ["pointer", "detail"]),
            },
            "code": {"type": "string", "description": "scheduling rule code (409/422 rule violations)"},
            "conflicting_session_id": {"type": ["string", "null"]},
        },
        "required": ["type", "title", "status", "detail"],
    },
    "Subject": obj({"subject_id": ID, "name": NAME}, ["subject_id", "name"]),
    "SubjectCreate": obj({"subject_id": ID, "name": NAME}, ["name"]),
    "SubjectPatch": obj({"name": NAME}, ["name"]),
    "Qualification": _qualification,
    "Level": _level,
    "WeeklyWindow": _window,
    "AvailabilityException": _exception,
    "Instructor": obj({"instructor_id": ID, **_instructor_fields}, ["instructor_id", *_instructor_fields.keys()]),
    "InstructorCreate": obj({"instructor_id": ID, **_instructor_fields}, ["name", "email", "time_zone"]),
    "InstructorPatch": obj(dict(_instructor_fields), [], minProperties=1),
    "Student": obj({"student_id": ID, **_student_fields}, ["student_id", *_student_fields.keys()]),
    "StudentCreate": obj({"student_id": ID, **_student_fields}, ["name", "time_zone"]),
    "StudentPatch": obj(dict(_student_fields), [], minProperties=1),
    "Booking": obj(_booking_props, list(_booking_props)),
    "BookingDetail": obj(
        {**_booking_props, "sessions": {"type": "array", "items": ref("Session")}},
        [*_booking_props, "sessions"],
    ),
    "BookingCreate": obj(_booking_fields, ["subject_id", "student_ids", "start", "duration_minutes"]),
    "BookingPatch": obj(
        {
            "start": _booking_fields["start"],
            "duration_minutes": _booking_fields["duration_minutes"],
            "instructor_id": _booking_fields["instructor_id"],
            "notes": _booking_fields["notes"],
            "recording": _booking_fields["recording"],
            "curriculum_unit": _booking_fields["curriculum_unit"],
        },
        [],
        minProperties=1,
    ),
    "BookingCancel": obj({"reason": {"type": "string", "maxLength": 1000}}),
    "Session": obj(_session_props, list(_session_props)),
    "Attendance": obj(
        {
            "participant_id": {"type": "string"},
            "role": {"type": "string"},
            "joined_at": DATETIME,
            "left_at": nullable(DATETIME),
        },
        ["participant_id", "role", "joined_at", "left_at"],
    ),
    "Recording": obj(
        {
            "recording_id": {"type": "string"},
            "session_id": ID,
            "status": {"type": "string"},
            "coverage": {"type": "number"},
            "gaps": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "files": {"type": "array", "items": {"type": "string"}},
            "updated_at": DATETIME,
        },
        ["recording_id", "session_id", "status", "coverage", "gaps", "files", "updated_at"],
    ),
    "SessionDetail": obj(
        {
            **_session_props,
            "attendance": {"type": "array", "items": ref("Attendance")},
            "recording_info": {"anyOf": [ref("Recording"), {"type": "null"}]},
        },
        [*_session_props, "attendance", "recording_info"],
    ),
    "JoinLinkCreate": obj(
        {"participant_id": ID, "role": {"type": "string", "enum": ["instructor", "student", "observer"]}},
        ["participant_id", "role"],
    ),
    "JoinLink": obj(
        {"url": {"type": "string"}, "token": {"type": "string"}, "expires_at": DATETIME},
        ["url", "token", "expires_at"],
    ),
    "WebhookSubscription": obj(_subscription_props, list(_subscription_props)),
    "WebhookSubscriptionCreated": obj(
        {**_subscription_props, "secret": {"type": "string", "description": "whsec_..., shown once"}},
        [*_subscription_props, "secret"],
    ),
    "WebhookSubscriptionCreate": obj({"url": _url_in, "event_types": _event_types_in}, ["url"]),
    "WebhookSubscriptionPatch": obj(
        {"url": _url_in, "event_types": _event_types_in, "active": {"type": "boolean"}}, [], minProperties=1
    ),
    "SubjectPage": page_of("Subject"),
    "InstructorPage": page_of("Instructor"),
    "StudentPage": page_of("Student"),
    "BookingPage": page_of("Booking"),
    "SessionPage": page_of("Session"),
    "WebhookSubscriptionPage": page_of("WebhookSubscription"),
    "Node": obj(
        {
            "node_id": {"type": "string"},
            "kind": {"type": "string", "enum": ["media", "recorder", "signaling"]},
            "region": {"type": "string"},
            "state": {"type": "string"},
            "version": {"type": "string"},
            "url": {"type": "string"},
            "rooms": {"type": "integer"},
            "participants": {"type": "integer"},
            "streams": {"type": "integer"},
            "capacity_streams": {"type": "integer"},
            "load": {"type": "number", "description": "(streams + reserved) / capacity"},
            "cpu": {"type": "number"},
            "last_seen_s": {"type": "number"},
        },
        [
            "node_id",
            "kind",
            "region",
            "state",
            "version",
            "url",
            "rooms",
            "participants",
            "streams",
            "capacity_streams",
            "load",
            "cpu",
            "last_seen_s",
        ],
    ),
    "NodeList": obj(
        {
            "items": {"type": "array", "items": ref("Node")},
            "imbalance": {
                "type": "object",
                "description": "per region: max load minus min load of its serving media nodes (0 = balanced)",
                "additionalProperties": {"type": "number"},
            },
            "hot_nodes": {"type": "array", "items": {"type": "string"}},
        },
        ["items", "imbalance", "hot_nodes"],
    ),
    "RolloutCreate": obj(
        {
            "to_version": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+-]*$",
            },
            "regions": {
                "type": "array",
                "items": ID,
                "maxItems": 64,
                "uniqueItems": True,
                "description": "regions to walk, in order (default: all)",
            },
            "max_unavailable": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1},
        },
        ["to_version"],
    ),
    "Rollout": obj(
        {
            "rollout_id": {"type": "string"},
            "to_version": {"type": "string"},
            "regions": {"type": "array", "items": {"type": "string"}},
            "max_unavailable": {"type": "integer"},
            "state": {"type": "string", "enum": ["running", "done", "failed", "cancelled"]},
            "done": {"type": "array", "items": {"type": "string"}},
            "current": {"type": "array", "items": {"type": "string"}},
            "pending": {"type": "array", "items": {"type": "string"}},
            "error": {"type": ["string", "null"]},
            "started_at": {"type": "number"},
            "updated_at": {"type": "number"},
        },
        [
            "rollout_id",
            "to_version",
            "regions",
            "max_unavailable",
            "state",
            "done",
            "current",
            "pending",
            "error",
            "started_at",
            "updated_at",
        ],
    ),
    "MatchResult": obj(
        {
            "feasible": {"type": "boolean"},
            "candidates": {
                "type": "array",
                "description": "feasible instructors, best first, each with the reasons for its rank",
                "items": obj(
                    {
                        "instructor_id": {"type": "string"},
                        "rank": {"type": "integer"},
                        "score": {"type": "number"},
                        "reasons": {
                            "type": "array",
                            "items": obj(
                                {
                                    "factor": {"type": "string"},
                                    "score": {"type": "number"},
                                    "weight": {"type": "number"},
                                    "detail": {"type": "string"},
                                },
                                ["factor", "score", "weight", "detail"],
                            ),
                        },
                    },
                    ["instructor_id", "rank", "score", "reasons"],
                ),
            },
            "failure_counts": {
                "type": "object",
                "description": "rule code -> how many instructors it excluded",
                "additionalProperties": {"type": "integer"},
            },
            "alternatives": {
                "type": "array",
                "description": "when nothing is feasible: the nearest feasible times and instructors",
                "items": obj(
                    {
                        "start": DATETIME,
                        "instructor_id": {"type": "string"},
                        "score": {"type": "number"},
                        "why": {"type": "string"},
                    },
                    ["start", "instructor_id", "score", "why"],
                ),
            },
            "request_violations": {
                "type": "array",
                "items": obj(
                    {
                        "rule": {"type": "string"},
                        "message": {"type": "string"},
                        "conflicting_session_id": {"type": ["string", "null"]},
                    },
                    ["rule", "message", "conflicting_session_id"],
                ),
            },
        },
        ["feasible", "candidates", "failure_counts", "alternatives", "request_violations"],
    ),
    "Forecast": obj(
        {
            "generated_at": DATETIME,
            "hours": {"type": "integer"},
            "regions": {
                "type": "array",
                "items": obj(
                    {
                        "region": {"type": "string"},
                        "slots": {
                            "type": "array",
                            "items": obj(
                                {
                                    "start": DATETIME,
                                    "sessions": {"type": "integer"},
                                    "participants": {"type": "integer"},
                                    "streams": {"type": "integer"},
                                    "nodes_needed": {"type": "integer"},
                                },
                                ["start", "sessions", "participants", "streams", "nodes_needed"],
                            ),
                        },
                        "peak_nodes_needed": {"type": "integer"},
                        "nodes_serving": {"type": "integer"},
                    },
                    ["region", "slots", "peak_nodes_needed", "nodes_serving"],
                ),
            },
        },
        ["generated_at", "hours", "regions"],
    ),
}
