"""Prometheus metrics of the orchestrator's API and webhook dispatcher (``classmesh_orchestrator_*``).

Labels are bounded: route templates (``/v1/bookings/{booking_id}``), status classes (``2xx``) and
delivery outcomes, never an id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

API_REQUESTS = Counter(
    "classmesh_orchestrator_api_requests_total",
    "REST API requests by route template, method and status class.",
    ["route", "method", "status_class"],
)

API_REQUEST_SECONDS = Histogram(
    "classmesh_orchestrator_api_request_duration_seconds",
    "REST API request handling time by route template.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

WEBHOOK_DELIVERIES = Counter(
    "classmesh_orchestrator_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, given_up).",
    ["outcome"],
)

WEBHOOK_OUTBOX_LAG = Gauge(
    "classmesh_orchestrator_webhook_outbox_lag_seconds",
    "Age of the oldest webhook delivery still pending (0 when the outbox is drained).",
)

NOTIFICATIONS_PLANNED = Counter(
    "classmesh_orchestrator_notifications_planned_total",
    "Notifications planned (inserted, or planned again after a change) by kind.",
    ["kind"],
)

NOTIFICATIONS_SENT = Counter(
    "classmesh_orchestrator_notifications_sent_total",
    "Notifications sent by kind and channel.",
    ["kind", "channel"],
)

NOTIFICATIONS_FAILED = Counter(
    "classmesh_orchestrator_notifications_failed_total",
    "Failed notification attempts by kind, channel and outcome (retry, failed, uncertain).",
    ["kind", "channel", "outcome"],
)

NOTIFICATIONS_DROPPED = Counter(
    "classmesh_orchestrator_notifications_dropped_total",
    "Notifications not sent on purpose by kind and status (skipped: student joined, superseded, no address; "
    "cancelled: session cancelled or moved).",
    ["kind", "status"],
)

NOTIFICATION_SEND_SECONDS = Histogram(
    "classmesh_orchestrator_notification_send_duration_seconds",
    "Time one channel took to send one notification.",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

NOTIFICATION_DELAY_SECONDS = Histogram(
    "classmesh_orchestrator_notification_delay_seconds",
    "From a notification's due time to its sending, by kind.",
    ["kind"],
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)

NOTIFICATIONS_OLDEST_PENDING = Gauge(
    "classmesh_orchestrator_notifications_oldest_pending_seconds",
    "How long the most overdue notification that is ready to send has waited past its due time (0 when none).",
)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


# ---------------------------------------------------------------------- scheduling operations

SERIES_CHANGES = Counter(
    "classmesh_orchestrator_series_changes_total",
    "Occurrence operations on recurring bookings by operation (skip, cancel_following, move_this, move_following) "
    "and outcome (changed, unchanged, refused).",
    ["operation", "outcome"],
)

SUBSTITUTIONS = Counter(
    "classmesh_orchestrator_substitutions_total",
    "Sessions that lost their instructor, by policy and outcome (assigned, proposed, uncovered, confirmed, "
    "declined, refused).",
    ["policy", "outcome"],
)

OPTIMIZATION_JOBS = Counter(
    "classmesh_orchestrator_optimization_jobs_total",
    "Optimisation jobs finished on this replica by outcome (succeeded, failed, cancelled).",
    ["outcome"],
)

OPTIMIZATION_JOBS_RUNNING = Gauge(
    "classmesh_orchestrator_optimization_jobs_running",
    "Optimisation jobs queued or running on this replica.",
)

OPTIMIZATION_SECONDS = Histogram(
    "classmesh_orchestrator_optimization_duration_seconds",
    "Wall time of optimisation jobs from start to finish (building the model included).",
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)

OPTIMIZATION_CHANGES_APPLIED = Counter(
    "classmesh_orchestrator_optimization_changes_total",
    "Instructor changes proposed by optimisation jobs when applied, by outcome (applied, refused).",
    ["outcome"],
)

ENGAGEMENT_EVENTS = Counter(
    "classmesh_orchestrator_engagement_events_total",
    "Engagement events stored from the media nodes' event stream, by kind (talk, chat, hand, reaction, "
    "poll_answer, check_answer); a redelivered event is not counted again.",
    ["kind"],
)

AT_RISK_FLAGS = Counter(
    "classmesh_orchestrator_at_risk_flags_total",
    "student_at_risk exceptions raised (on new evidence) or resolved (no rule holds any more).",
    ["change"],
)

DOCUMENTS_DRAFTED = Counter(
    "classmesh_orchestrator_session_documents_drafted_total",
    "Session documents drafted when their session ended.",
)

EVENTS_DROPPED = Counter(
    "classmesh_orchestrator_presence_events_dropped_total",
    "Presence events given up after failing to be stored five times in a row (each is logged whole).",
)
