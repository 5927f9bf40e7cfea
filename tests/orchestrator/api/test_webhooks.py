"""Webhook delivery to a real local aiohttp receiver: signatures, retries, per-booking order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import standardwebhooks
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from orchestrator.store import Store, emit_event
from orchestrator.store.models import DeliveryStatus
from orchestrator.webhooks import DispatcherConfig, WebhookDispatcher, new_secret, sign

FAST = DispatcherConfig(poll_interval=0.02, backoff_base=0.05, backoff_max=0.2, max_attempts=5, request_timeout=2)


@dataclass
class Receiver:
    """Fails the first ``fail_first[n]`` attempts of the event whose payload has ``n``; records everything."""

    secret: str
    fail_first: dict[int, int] = field(default_factory=dict)
    attempts: list[tuple[int, str]] = field(default_factory=list)  # (n, "ok"|"fail") in arrival order
    delivered: list[dict[str, Any]] = field(default_factory=list)
    ids: dict[int, set[str]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expect: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        # verify independently of our own signing code
        payload = standardwebhooks.Webhook(self.secret).verify(body, dict(request.headers))
        n = payload["data"]["n"]
        self.ids.setdefault(n, set()).add(request.headers["webhook-id"])
        seen = sum(1 for m, _ in self.attempts if m == n)
        if seen < self.fail_first.get(n, 0):
            self.attempts.append((n, "fail"))
            return web.Response(status=503)
        self.attempts.append((n, "ok"))
        self.delivered.append(payload)
        if len(self.delivered) >= self.expect:
            self.done.set()
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver(new_secret())
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield rec, str(server.make_url("/hook"))
    finally:
        await server.close()


def test_signature_matches_the_standard_webhooks_reference() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    ours = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert ours == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    wh = standardwebhooks.Webhook(secret)
    from datetime import UTC, datetime

    assert wh.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, UTC), body) == ours


async def _drained(store: Store) -> None:
    for _ in range(250):
        if await store.outbox_lag_seconds() == 0.0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the outbox did not drain")


async def _emit(store: Store, n: int, key: str) -> None:
    async with store.transaction() as conn:
        await emit_event(conn, "session.started", {"n": n}, key)


async def test_retries_until_delivered_in_order_per_booking(
    sqlite_store: Store, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    await sqlite_store.create_subscription(url, [], rec.secret)
    rec.fail_first = {1: 2, 10: 1}
    rec.expect = 4
    for n in (1, 2, 3):
        await _emit(sqlite_store, n, "bkg_a")
    await _emit(sqlite_store, 10, "bkg_b")
    before = REGISTRY.get_sample_value("classmesh_orchestrator_webhook_deliveries_total", {"outcome": "retry"}) or 0
    dispatcher = WebhookDispatcher(sqlite_store, FAST)
    dispatcher.start()
    try:
        await asyncio.wait_for(rec.done.wait(), 10)
        await _drained(sqlite_store)
    finally:
        await dispatcher.close()
        await dispatcher.close()
    order_a = [n for n, outcome in rec.attempts if n < 10]
    # event 2 was not even tried before event 1 succeeded, nor 3 before 2
    assert order_a == [1, 1, 1, 2, 3]
    assert [p["data"]["n"] for p in rec.delivered if p["data"]["n"] < 10] == [1, 2, 3]
    # a booking's failures do not hold up another booking
    assert rec.attempts.index((10, "ok")) < rec.attempts.index((1, "ok"))
    assert all(len(ids) == 1 for ids in rec.ids.values()), "webhook-id must be stable across retries"
    assert rec.delivered[0]["type"] == "session.started"
    after = REGISTRY.get_sample_value("classmesh_orchestrator_webhook_deliveries_total", {"outcome": "retry"})
    assert after == before + 3
    assert await sqlite_store.outbox_lag_seconds() == 0.0


async def test_gives_up_after_max_attempts_and_unblocks_the_next_event(
    sqlite_store: Store, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    await sqlite_store.create_subscription(url, [], rec.secret)
    rec.fail_first = {1: 100}
    rec.expect = 1
    await _emit(sqlite_store, 1, "bkg_a")
    await _emit(sqlite_store, 2, "bkg_a")
    dispatcher = WebhookDispatcher(
        sqlite_store, DispatcherConfig(poll_interval=0.02, backoff_base=0.02, max_attempts=3)
    )
    dispatcher.start()
    try:
        await asyncio.wait_for(rec.done.wait(), 10)
        await _drained(sqlite_store)
    finally:
        await dispatcher.close()
    assert rec.attempts == [(1, "fail"), (1, "fail"), (1, "fail"), (2, "ok")]
    due = await sqlite_store.claim_due_deliveries()
    assert due == []


async def test_unreachable_receiver_is_retried_with_error_recorded(sqlite_store: Store) -> None:
    from tests.orchestrator.conftest import free_port

    sub = await sqlite_store.create_subscription(f"http://127.0.0.1:{free_port()}/hook", [], new_secret())
    await _emit(sqlite_store, 1, "bkg_a")
    dispatcher = WebhookDispatcher(sqlite_store, DispatcherConfig(backoff_base=30))
    dispatcher.start()
    try:
        assert await dispatcher.run_once() in (0, 1)
        for _ in range(100):
            import sqlalchemy as sa

            from orchestrator.store import schema as t

            async with sqlite_store.engine.connect() as c:
                row = (await c.execute(sa.select(t.webhook_deliveries))).one()
            if row.attempts:
                break
            await asyncio.sleep(0.02)
    finally:
        await dispatcher.close()
    assert row.attempts == 1 and row.status == DeliveryStatus.PENDING.value
    assert row.subscription_id == sub.subscription_id
    assert "Connect" in (row.last_error or "") or "Connection" in (row.last_error or "")
