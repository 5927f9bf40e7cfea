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
    "exceptions:write",
    "scheduling:read",
    "scheduling:write",
    "notifications:read",
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
    "BookingCancel": obj(
        {
            "reason": {"type": "string", "maxLength": 1000},
            "from_session_id": ID
            | {"description": "cancel only this occurrence and the later ones (by occurrence index)"},
        }
    ),
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
            "status": {
                "type": "string",
                "enum": ["recording", "assembling", "ready", "failed"],
                "description": "ready: complete and verified; failed: gaps or unplayable (see gaps and details)",
            },
            "coverage": {"type": "number", "description": "seconds recorded / seconds of media sent (0..1)"},
            "gaps": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "number"}},
                "description": "[start, end] unix seconds of every instant missing from the final file",
            },
            "files": {"type": "array", "items": {"type": "string"}},
            "media_start": nullable({"type": "number"}),
            "media_end": nullable({"type": "number"}),
            "duration": nullable({"type": "number"}),
            "size_bytes": nullable({"type": "integer"}),
            "failovers": {"type": "integer", "description": "recorder copies replaced while the class ran"},
            "details": {
                "type": ["object", "null"],
                "description": "copies used, per-track packets, verification (decoded duration, A/V offsets)",
            },
            "created_at": DATETIME,
            "updated_at": DATETIME,
        },
        ["recording_id", "session_id", "status", "coverage", "gaps", "files", "failovers", "created_at", "updated_at"],
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
    "RecordingPage": page_of("Recording"),
    "WebhookSubscriptionPage": page_of("WebhookSubscription"),
    "Notification": obj(
        {
            "notification_id": ID,
            "session_id": ID,
            "recipient_id": ID,
            "recipient_role": {"type": "string", "enum": ["student", "instructor"]},
            "kind": {"type": "string", "enum": ["reminder", "session_changed", "post_session", "absence_alert"]},
            "status": {
                "type": "string",
                "enum": ["pending", "sending", "sent", "failed", "uncertain", "cancelled", "skipped"],
                "description": "uncertain: the sender vanished mid-send through SMTP; an operational exception "
                "asks a human, it is never sent twice",
            },
            "due_at": DATETIME,
            "session_start": DATETIME | {"description": "the session start this notification was planned for"},
            "attempts": {"type": "integer", "minimum": 0},
            "channel": {"type": ["string", "null"], "enum": ["webhook", "smtp", None]},
            "address": {"type": ["string", "null"], "description": "the email address used (guardian for students)"},
            "join_link_jti": {"type": ["string", "null"], "description": "id of the join link it carried"},
            "sent_at": nullable(DATETIME),
            "last_error": {"type": ["string", "null"]},
            "details": {
                "type": "object",
                "description": "reminder: offset_minutes; session_changed: changes, old, new, revision",
            },
            "created_at": DATETIME,
            "updated_at": DATETIME,
        },
        [
            "notification_id",
            "session_id",
            "recipient_id",
            "recipient_role",
            "kind",
            "status",
            "due_at",
            "session_start",
            "attempts",
            "channel",
            "address",
            "join_link_jti",
            "sent_at",
            "last_error",
            "details",
            "created_at",
            "updated_at",
        ],
    ),
    "NotificationPage": page_of("Notification"),
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


# ---------------------------------------------------------------------- scheduling operations

_REASON: Schema = {"type": "string", "maxLength": 500}
_POLICY: Schema = {
    "type": "string",
    "enum": ["auto_assign", "propose"],
    "description": "auto_assign: the best feasible substitute takes the session; propose: wait for a confirm",
}
_CANDIDATES: Schema = {"type": "integer", "minimum": 1, "maximum": 20}
_rank_reason = obj(
    {
        "factor": {"type": "string"},
        "score": {"type": "number"},
        "weight": {"type": "number"},
        "detail": {"type": "string"},
    },
    ["factor", "score", "weight", "detail"],
)
_alternative = obj(
    {"start": DATETIME, "instructor_id": {"type": "string"}, "score": {"type": "number"}, "why": {"type": "string"}},
    ["start", "instructor_id", "score", "why"],
)
_change = obj(
    {
        "session_id": {"type": "string"},
        "start": DATETIME,
        "old_instructor_id": {"type": "string"},
        "new_instructor_id": {"type": "string"},
    },
    ["session_id", "start", "old_instructor_id", "new_instructor_id"],
)
_applied = obj(
    {
        "session_id": {"type": "string"},
        "old_instructor_id": {"type": "string"},
        "new_instructor_id": {"type": "string"},
    },
    ["session_id", "old_instructor_id", "new_instructor_id"],
)
_failed = obj(
    {
        "session_id": {"type": "string"},
        "new_instructor_id": {"type": "string"},
        "rule": {"type": "string", "description": "a scheduling rule code, or stale / not_found"},
        "message": {"type": "string"},
        "conflicting_session_id": {"type": ["string", "null"]},
    },
    ["session_id", "new_instructor_id", "rule", "message", "conflicting_session_id"],
)
_number_or_null: Schema = {"type": ["number", "null"]}

COMPONENTS.update(
    {
        "OccurrenceSkip": obj({"reason": _REASON}),
        "OccurrenceMove": obj(
            {
                "start": DATETIME | {"description": "the occurrence's new UTC start, on a 5-minute boundary"},
                "scope": {
                    "type": "string",
                    "enum": ["this", "following"],
                    "default": "this",
                    "description": "following: this occurrence and every later one move by the same local step",
                },
            },
            ["start"],
        ),
        "Settings": obj(
            {
                "substitution_policy": _POLICY,
                "substitute_candidates": _CANDIDATES
                | {"description": "ranked substitutes kept per proposal (and tried in order by auto_assign)"},
                "updated_at": nullable(DATETIME),
            },
            ["substitution_policy", "substitute_candidates", "updated_at"],
        ),
        "SettingsPatch": obj(
            {"substitution_policy": _POLICY, "substitute_candidates": _CANDIDATES}, [], minProperties=1
        ),
        "InstructorCancel": obj({"reason": _REASON}),
        "SubstituteCandidate": obj(
            {
                "instructor_id": {"type": "string"},
                "rank": {"type": "integer"},
                "tier": {
                    "type": "integer",
                    "description": "0 taught these students this subject, 1 taught this curriculum unit, 2 neither",
                },
                "score": {"type": "number"},
                "reasons": {"type": "array", "items": _rank_reason},
            },
            ["instructor_id", "rank", "tier", "score", "reasons"],
        ),
        "Substitution": obj(
            {
                "substitution_id": {"type": "string"},
                "session_id": {"type": "string"},
                "booking_id": {"type": "string"},
                "previous_instructor_id": {"type": "string"},
                "trigger": {"type": "string", "enum": ["leave", "instructor_cancel"]},
                "reason": {"type": "string"},
                "policy": _POLICY,
                "status": {"type": "string", "enum": ["proposed", "assigned", "confirmed", "declined"]},
                "candidates": {"type": "array", "items": ref("SubstituteCandidate")},
                "alternatives": {
                    "type": "array",
                    "items": _alternative,
                    "description": "when nobody can take the session as booked: the nearest feasible times",
                },
                "instructor_id": {"type": ["string", "null"], "description": "the substitute who took it"},
                "exception_id": {"type": ["string", "null"], "description": "the no_substitute exception"},
                "decision_reason": {"type": "string"},
                "created_at": DATETIME,
                "updated_at": DATETIME,
                "decided_at": nullable(DATETIME),
            },
            [
                "substitution_id",
                "session_id",
                "booking_id",
                "previous_instructor_id",
                "trigger",
                "reason",
                "policy",
                "status",
                "candidates",
                "alternatives",
                "instructor_id",
                "exception_id",
                "decision_reason",
                "created_at",
                "updated_at",
                "decided_at",
            ],
        ),
        "SubstitutionPage": page_of("Substitution"),
        "SubstitutionConfirm": obj(
            {
                "instructor_id": ID | {"description": "the substitute; default: the proposal's first candidate"},
                "reason": _REASON,
            }
        ),
        "SubstitutionDecline": obj({"reason": _REASON}),
        "OptimizationCreate": obj(
            {
                "week_start": {
                    "type": "string",
                    "format": "date",
                    "pattern": r"^\d{4}-\d{2}-\d{2}$",
                    "description": "the seven days from this date, 00:00 UTC",
                },
                "time_limit_s": {"type": "number", "minimum": 1, "maximum": 120, "default": 10},
                "reassign": {
                    "type": "boolean",
                    "default": False,
                    "description": "false: only sessions whose instructor is no longer feasible get another; "
                    "true: existing assignments may also change when that covers more sessions",
                },
            },
            ["week_start"],
        ),
        "Optimization": obj(
            {
                "optimization_id": {"type": "string"},
                "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
                "week_start": {"type": "string", "format": "date"},
                "time_limit_s": {"type": "number"},
                "reassign": {"type": "boolean"},
                "owner": {"type": "string", "description": "the orchestrator replica running the job"},
                "heartbeat_at": DATETIME,
                "cancel_requested": {"type": "boolean"},
                "progress": obj(
                    {
                        "phase": {"type": "string"},
                        "elapsed_s": {"type": "number"},
                        "fraction": {"type": "number", "description": "share of the time limit used"},
                        "solutions": {"type": "integer"},
                        "best_objective": _number_or_null,
                        "best_bound": _number_or_null,
                        "gap": _number_or_null,
                    },
                    ["phase", "elapsed_s", "fraction", "solutions", "best_objective", "best_bound", "gap"],
                ),
                "result": {
                    "anyOf": [
                        obj(
                            {
                                "solver_status": {"type": "string"},
                                "objective": {"type": "number"},
                                "bound": {"type": "number"},
                                "gap": {"type": "number"},
                                "soft_gap": {"type": "number"},
                                "wall_s": {"type": "number"},
                                "sessions": {"type": "integer"},
                                "assigned": {"type": "integer"},
                                "unassigned": {"type": "array", "items": {"type": "string"}},
                                "change_count": {"type": "integer"},
                                "changes": {"type": "array", "items": _change},
                            },
                            [
                                "solver_status",
                                "objective",
                                "bound",
                                "gap",
                                "soft_gap",
                                "wall_s",
                                "sessions",
                                "assigned",
                                "unassigned",
                                "change_count",
                                "changes",
                            ],
                        ),
                        {"type": "null"},
                    ]
                },
                "error": {"type": ["string", "null"]},
                "applied_at": nullable(DATETIME),
                "apply_report": {
                    "anyOf": [
                        obj(
                            {
                                "state": {"type": "string", "enum": ["applying", "done", "failed"]},
                                "applied_count": {"type": "integer"},
                                "failed_count": {"type": "integer"},
                                "applied": {"type": "array", "items": _applied},
                                "failed": {"type": "array", "items": _failed},
                                "error": {"type": "string"},
                            },
                            ["state"],
                        ),
                        {"type": "null"},
                    ]
                },
                "created_at": DATETIME,
                "updated_at": DATETIME,
                "started_at": nullable(DATETIME),
                "finished_at": nullable(DATETIME),
            },
            [
                "optimization_id",
                "status",
                "week_start",
                "time_limit_s",
                "reassign",
                "owner",
                "heartbeat_at",
                "cancel_requested",
                "progress",
                "result",
                "error",
                "applied_at",
                "apply_report",
                "created_at",
                "updated_at",
                "started_at",
                "finished_at",
            ],
        ),
    }
)
