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


def status_class(status: int) -> str:
    return f"{status // 100}xx"
