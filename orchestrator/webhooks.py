"""Outgoing webhooks: Standard Webhooks signing and the ``WebhookDispatcher`` that drains the outbox.

Events are written by ``emit_event`` (re-exported here) in the same transaction as the change. The
dispatcher delivers them at least once, with a stable ``webhook-id`` (the event id), retrying failures
with exponential backoff, and in order per booking: a booking's event N+1 is not sent to a subscriber
before event N was delivered to it or given up.

States of the dispatcher: created -> running (``start()``) -> closed (``close()``, idempotent).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp

from orchestrator import metrics
from orchestrator.store import Store, emit_event
from orchestrator.store.codec import iso
from orchestrator.store.models import WebhookDelivery

__all__ = ["DispatcherConfig", "WebhookDispatcher", "emit_event", "new_secret", "sign"]

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _secret_bytes(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw)


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value: ``v1,`` + base64(HMAC-SHA256(key, "id.ts.body"))."""
    mac = hmac.new(_secret_bytes(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def render_body(delivery: WebhookDelivery) -> str:
    """The JSON envelope sent for an event: ``{"type", "timestamp", "data"}``."""
    event = delivery.event
    return json.dumps(
        {"type": event.event_type, "timestamp": iso(event.created_at), "data": event.payload},
        separators=(",", ":"),
        sort_keys=True,
    )


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    poll_interval: float = 1.0
    batch_size: int = 50
    max_attempts: int = 8
    backoff_base: float = 2.0  # seconds before the 2nd attempt; doubles each time
    backoff_max: float = 3600.0
    request_timeout: float = 10.0
    lease_seconds: float = 60.0
    concurrency: int = 16


class WebhookDispatcher:
    """Delivers pending webhook deliveries from the store's outbox."""

    def __init__(
        self,
        store: Store,
        config: DispatcherConfig | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._store = store
        self._config = config or DispatcherConfig()
        self._session = session
        self._owns_session = session is None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def config(self) -> DispatcherConfig:
        return self._config

    def start(self) -> None:
        if self._task is not None or self._closed:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.request_timeout))
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    def wake(self) -> None:
        """Look at the outbox now instead of at the next poll (call after emitting events)."""
        self._wake.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.run_once()
                metrics.WEBHOOK_OUTBOX_LAG.set(await self._store.outbox_lag_seconds())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("webhook dispatcher iteration failed")
                sent = 0
            if sent:
                continue  # there may be more, or next events in a chain that just got unblocked
            self._wake.clear()
            try:
                async with asyncio.timeout(self._config.poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """Deliver what is due now; returns how many deliveries were attempted."""
        due = await self._store.claim_due_deliveries(
            limit=self._config.batch_size, lease=timedelta(seconds=self._config.lease_seconds)
        )
        if not due:
            return 0
        sem = asyncio.Semaphore(self._config.concurrency)

        async def one(d: WebhookDelivery) -> None:
            async with sem:
                await self._deliver(d)

        await asyncio.gather(*(one(d) for d in due))
        return len(due)

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        assert self._session is not None, "start() the dispatcher first"
        try:
            sub = await self._store.get_subscription(delivery.subscription_id)
        except Exception:
            logger.exception("delivery=%s subscription lookup failed", delivery.delivery_id)
            await self._failed(delivery, "subscription lookup failed")
            return
        if not sub.active:
            await self._store.mark_attempt_failed(delivery.delivery_id, "subscription inactive", None)
            metrics.WEBHOOK_DELIVERIES.labels("given_up").inc()
            return
        body = render_body(delivery)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "classmesh-webhooks/1",
            "webhook-id": delivery.event.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(sub.secret, delivery.event.event_id, timestamp, body),
        }
        try:
            async with self._session.post(sub.url, data=body.encode(), headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    await self._store.mark_delivered(delivery.delivery_id)
                    metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
                    logger.info(
                        "webhook delivered event=%s type=%s subscription=%s attempt=%d",
                        delivery.event.event_id,
                        delivery.event.event_type,
                        sub.subscription_id,
                        delivery.attempts + 1,
                    )
                    return
                error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        await self._failed(delivery, error)

    async def _failed(self, delivery: WebhookDelivery, error: str) -> None:
        attempts = delivery.attempts + 1
        if attempts >= self._config.max_attempts:
            await self._store.mark_attempt_failed(delivery.delivery_id, error, None)
            metrics.WEBHOOK_DELIVERIES.labels("given_up").inc()
            logger.warning(
                "webhook given up event=%s subscription=%s attempts=%d error=%s",
                delivery.event.event_id,
                delivery.subscription_id,
                attempts,
                error,
            )
            return
        delay = min(self._config.backoff_max, self._config.backoff_base * 2 ** (attempts - 1))
        delay *= 1 + random.uniform(0, 0.1)  # a little jitter so retries of many events spread out
        await self._store.mark_attempt_failed(delivery.delivery_id, error, datetime.now(UTC) + timedelta(seconds=delay))
        metrics.WEBHOOK_DELIVERIES.labels("retry").inc()
        logger.info(
            "webhook retry event=%s subscription=%s attempt=%d in=%.1fs error=%s",
            delivery.event.event_id,
            delivery.subscription_id,
            attempts,
            delay,
            error,
        )
