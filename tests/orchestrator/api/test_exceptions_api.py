"""The exception queue over HTTP on a real store: listing with filters, taking, acknowledging, snoozing and
resolving, the errors, and the scopes."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from orchestrator.api import create_api_key
from orchestrator.store import schema as t
from tests.orchestrator.api.conftest import ApiFactory


async def test_the_queue_is_listed_and_worked_through(make_api: ApiFactory) -> None:
    api = await make_api()
    risk = await api.store.raise_exception(
        "student_at_risk:s1", "student_at_risk", "medium", subject_refs={"student_id": "s1"}, details={"x": 1}
    )
    gaps = await api.store.raise_exception("recording_incomplete:ses_1", "recording_incomplete", "high")
    _, reader = await create_api_key(api.store, "ops", ["ops:read"])
    _, worker = await create_api_key(api.store, "ops desk", ["ops:read", "exceptions:write"])

    async def get(path: str, token: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
        resp = await api.client.get(f"/v1{path}", headers=api.auth(token))
        return resp.status, await resp.json()

    async def patch(body: dict, token: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
        resp = await api.client.patch(f"/v1/exceptions/{risk.exception_id}", json=body, headers=api.auth(token))
        return resp.status, await resp.json()

    status, listed = await get("/exceptions", reader)
    assert status == 200 and {e["exception_id"] for e in listed["items"]} == {risk.exception_id, gaps.exception_id}
    status, listed = await get("/exceptions?kind=student_at_risk&status=open,acked", reader)
    assert [e["exception_id"] for e in listed["items"]] == [risk.exception_id]
    item = listed["items"][0]
    assert item["subject_refs"] == {"student_id": "s1"} and item["occurrences"] == 1 and item["owner"] is None

    # ops:read may look but not act
    assert (await patch({"owner": "gina"}, reader))[0] == 403
    status, body = await patch({"owner": "gina", "status": "acked"}, worker)
    assert status == 200 and (body["owner"], body["status"]) == ("gina", "acked")
    assert (await patch({"status": "snoozed"}, worker))[0] == 422  # needs snoozed_until
    assert (await patch({"snoozed_until": "2030-01-01T00:00:00Z"}, worker))[0] == 422  # only when snoozing
    status, body = await patch({"status": "snoozed", "snoozed_until": "2030-01-01T00:00:00Z"}, worker)
    assert status == 200 and body["snoozed_until"] == "2030-01-01T00:00:00Z"
    status, body = await patch({"owner": "hal"}, worker)  # handing it over keeps the snooze
    assert status == 200 and (body["owner"], body["status"], body["snoozed_until"]) == (
        "hal",
        "snoozed",
        "2030-01-01T00:00:00Z",
    )
    assert await api.store.wake_snoozed_exceptions(datetime(2029, 12, 31, tzinfo=UTC)) == 0
    assert await api.store.wake_snoozed_exceptions(datetime(2030, 1, 1, tzinfo=UTC)) == 1  # its time came
    status, body = await get(f"/exceptions/{risk.exception_id}")
    assert (body["status"], body["snoozed_until"]) == ("open", None)
    status, body = await patch({"status": "resolved", "owner": "gina"}, worker)
    assert status == 200 and body["status"] == "resolved" and body["resolved_at"] is not None
    resolved_at = body["resolved_at"]
    status, body = await patch({"owner": "ivy"}, worker)  # handing over a resolved one keeps when it was resolved
    assert (body["status"], body["resolved_at"]) == ("resolved", resolved_at)
    status, body = await patch({"status": "open"}, worker)  # reopened by hand: no longer resolved
    assert (body["status"], body["resolved_at"]) == ("open", None)
    status, body = await patch({"status": "resolved"}, worker)
    assert (await get(f"/exceptions/{risk.exception_id}"))[1]["status"] == "resolved"
    # webhooks for helpdesks: opened, then each change between resolved and not (acks, snoozes, owners: none)
    async with api.store.read() as c:
        rows = await c.execute(
            sa.select(t.webhook_outbox.c.event_type, t.webhook_outbox.c.payload)
            .where(t.webhook_outbox.c.ordering_key == risk.exception_id)
            .order_by(t.webhook_outbox.c.created_at)
        )
        sent = [(r.event_type, r.payload["exception"]["status"]) for r in rows]
    assert sent == [
        ("exception.opened", "open"),
        ("exception.resolved", "resolved"),
        ("exception.opened", "open"),
        ("exception.resolved", "resolved"),
    ]
    assert [e["kind"] for e in (await get("/exceptions?status=open"))[1]["items"]] == ["recording_incomplete"]

    # bad input changes nothing
    for body in ({}, {"status": "gone"}, {"owner": ""}, {"owner": "x", "extra": 1}):
        status, problem = await patch(body, worker)
        assert status == 422, (body, problem)
    assert (await get(f"/exceptions/{risk.exception_id}"))[1]["owner"] == "ivy"
    assert (await get("/exceptions/exc_nope"))[0] == 404
    assert (await get("/exceptions?status=closed"))[0] == 400
    resp = await api.client.get("/v1/exceptions")
    assert resp.status == 401
