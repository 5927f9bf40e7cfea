"""The booking REST API over HTTP against a real SQLite store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY

from orchestrator.api import ApiHooks, BookingChange, create_api_key, list_api_keys, revoke_api_key
from orchestrator.errors import RuleViolation
from orchestrator.store.models import BookingDraft, Occurrence, Session
from tests.orchestrator.api.conftest import Api, ApiFactory

START = "2030-03-04T09:00:00Z"


async def seed(api: Api) -> None:
    h = api.auth()
    r = await api.client.post("/v1/subjects", json={"subject_id": "math", "name": "Mathematics"}, headers=h)
    assert r.status == 201, await r.text()
    for iid in ("ins_a", "ins_b"):
        r = await api.client.post(
            "/v1/instructors",
            json={
                "instructor_id": iid,
                "name": iid,
                "email": f"{iid}@example.org",
                "time_zone": "Europe/Berlin",
                "qualifications": [{"subject_id": "math", "max_level": 5}],
                "weekly_availability": [{"weekday": 0, "start": "08:00", "end": "18:00"}],
                "buffer_minutes": 10,
            },
            headers=h,
        )
        assert r.status == 201, await r.text()
    for sid in ("stu_1", "stu_2"):
        r = await api.client.post(
            "/v1/students",
            json={"student_id": sid, "name": sid, "time_zone": "Asia/Tokyo", "country": "JP"},
            headers=h,
        )
        assert r.status == 201, await r.text()


async def post_booking(api: Api, **overrides: Any) -> Any:
    body = {
        "subject_id": "math",
        "student_ids": ["stu_1"],
        "instructor_id": "ins_a",
        "start": START,
        "duration_minutes": 60,
    }
    body.update(overrides)
    return await api.client.post("/v1/bookings", json=body, headers=api.auth())


async def problem_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["status"] == status and body["detail"] and body["title"] and body["type"]
    return dict(body)


async def test_openapi_document_and_docs_page_cover_every_operation(api: Api) -> None:
    r = await api.client.get("/v1/openapi.json")
    assert r.status == 200
    doc = await r.json()
    assert doc["openapi"] == "3.1.0"
    ops = [(m.upper(), p) for p, ms in doc["paths"].items() for m in ms]
    assert ("POST", "/bookings") in ops and ("PATCH", "/bookings/{booking_id}") in ops
    assert ("POST", "/sessions/{session_id}/join-links") in ops and ("DELETE", "/webhooks/{subscription_id}") in ops
    page = await (await api.client.get("/v1/docs")).text()
    for _, path in ops:
        assert f"/v1{path}" in page
    assert "<script" not in page


async def test_requests_without_a_valid_key_are_401(api: Api) -> None:
    await problem_of(await api.client.get("/v1/subjects"), 401)
    await problem_of(await api.client.get("/v1/subjects", headers={"Authorization": "Basic abc"}), 401)
    await problem_of(await api.client.get("/v1/subjects", headers={"Authorization": "Bearer cm_nope"}), 401)
    forged = "cm_" + "0" * 16 + "_" + "A" * 43
    await problem_of(await api.client.get("/v1/subjects", headers={"Authorization": f"Bearer {forged}"}), 401)
    key_id, token = await create_api_key(api.store, "short-lived", ["directory:read"])
    assert (await api.client.get("/v1/subjects", headers=api.auth(token))).status == 200
    assert await revoke_api_key(api.store, key_id)
    body = await problem_of(await api.client.get("/v1/subjects", headers=api.auth(token)), 401)
    assert "revoked" in body["detail"]
    assert [k.name for k in await list_api_keys(api.store) if not k.active] == ["short-lived"]


async def test_missing_scope_is_403(api: Api) -> None:
    _, reader = await create_api_key(api.store, "reader", ["bookings:read"])
    r = await api.client.post("/v1/subjects", json={"name": "Art"}, headers=api.auth(reader))
    body = await problem_of(r, 403)
    assert "directory:write" in body["detail"]


async def test_bad_input_gets_specific_4xx_not_500(api: Api) -> None:
    h = api.auth()
    c = api.client
    body = await problem_of(
        await c.post(
            "/v1/instructors", json={"name": "X", "email": "x@example.org", "time_zone": "Mars/Olympus"}, headers=h
        ),
        422,
    )
    assert body["errors"] == [{"pointer": "/time_zone", "detail": body["errors"][0]["detail"]}]
    assert "IANA" in body["errors"][0]["detail"]
    body = await problem_of(await c.post("/v1/subjects", json={"name": "A", "colour": "red"}, headers=h), 422)
    assert body["errors"][0]["pointer"] == "/colour"
    body = await problem_of(await c.post("/v1/subjects", json={"name": 7}, headers=h), 422)
    assert "must be a string" in body["errors"][0]["detail"]
    body = await problem_of(
        await c.post("/v1/subjects", data=b'{"name": ', headers={**h, "Content-Type": "application/json"}), 400
    )
    assert "malformed JSON" in body["detail"]
    await problem_of(
        await c.post("/v1/subjects", data=b'{"name": NaN}', headers={**h, "Content-Type": "application/json"}), 400
    )
    await problem_of(await c.post("/v1/subjects", data=b"name=x", headers={**h, "Content-Type": "text/plain"}), 415)
    huge = json.dumps({"name": "x" * (300 * 1024)})
    await problem_of(await c.post("/v1/subjects", data=huge, headers={**h, "Content-Type": "application/json"}), 413)
    await problem_of(await c.get("/v1/subjects/..%20bad", headers=h), 404)
    await problem_of(await c.get("/v1/subjects?limit=500", headers=h), 400)
    await problem_of(await c.get("/v1/subjects?limit=ten", headers=h), 400)
    await problem_of(await c.get("/v1/subjects?cursor=garbage", headers=h), 400)
    await problem_of(await c.get("/v1/nowhere", headers=h), 404)
    r = await c.delete("/v1/subjects", headers=h)
    await problem_of(r, 405)
    assert r.headers["Allow"] == "GET, POST"
    await seed(api)
    body = await problem_of(await post_booking(api, start="2030-03-04T09:03:00Z"), 422)
    assert body["errors"][0]["pointer"] == "/start"
    body = await problem_of(await post_booking(api, start="next tuesday"), 422)
    assert body["errors"][0]["pointer"] == "/start"
    body = await problem_of(await post_booking(api, student_ids=["stu_1", "ghost"]), 422)
    assert body["errors"][0]["pointer"] == "/student_ids/1"
    body = await problem_of(await post_booking(api, rrule="FREQ=SECONDLY;COUNT=5"), 422)
    assert body["errors"][0]["pointer"] == "/rrule"
    body = await problem_of(await post_booking(api, instructor_id=None), 422)
    assert body["code"] == "instructor_required"


async def test_pagination_walks_every_item_once(api: Api) -> None:
    for i in range(7):
        r = await api.client.post("/v1/subjects", json={"subject_id": f"s{i}", "name": f"S{i}"}, headers=api.auth())
        assert r.status == 201
    seen: list[str] = []
    url = "/v1/subjects?limit=3"
    while True:
        page = await (await api.client.get(url, headers=api.auth())).json()
        assert len(page["items"]) <= 3
        seen += [s["subject_id"] for s in page["items"]]
        if page["next_cursor"] is None:
            break
        url = f"/v1/subjects?limit=3&cursor={page['next_cursor']}"
    assert seen == [f"s{i}" for i in range(7)]


async def test_booking_lifecycle_create_conflict_reschedule_cancel(api: Api) -> None:
    await seed(api)
    await api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, headers=api.auth())
    r = await post_booking(api, rrule="FREQ=WEEKLY;COUNT=3", recording=True, notes="algebra", curriculum_unit="alg-1")
    assert r.status == 201, await r.text()
    booking = await r.json()
    assert r.headers["Location"] == f"bookings/{booking['booking_id']}"
    assert [s["start"] for s in booking["sessions"]] == [
        "2030-03-04T09:00:00Z",
        "2030-03-11T09:00:00Z",
        "2030-03-18T09:00:00Z",
    ]
    assert all(s["recording"] and s["status"] == "scheduled" for s in booking["sessions"])

    clash = await problem_of(await post_booking(api, student_ids=["stu_2"], start="2030-03-11T09:30:00Z"), 409)
    assert clash["code"] == "instructor_double_booked"
    assert clash["conflicting_session_id"] == booking["sessions"][1]["session_id"]

    bid = booking["booking_id"]
    r = await api.client.patch(
        f"/v1/bookings/{bid}", json={"start": "2030-03-04T14:00:00Z", "duration_minutes": 45}, headers=api.auth()
    )
    assert r.status == 200, await r.text()
    moved = await r.json()
    assert moved["sessions"][0]["start"] == "2030-03-04T14:00:00Z"
    assert moved["sessions"][0]["end"] == "2030-03-04T14:45:00Z"
    # the old slot is free now
    assert (await post_booking(api, student_ids=["stu_2"], start="2030-03-11T09:30:00Z")).status == 201

    r = await api.client.patch(f"/v1/bookings/{bid}", json={"curriculum_unit": None, "notes": "n"}, headers=api.auth())
    edited = await r.json()
    assert edited["curriculum_unit"] is None and edited["notes"] == "n"
    assert edited["sessions"][0]["curriculum_unit"] is None

    r = await api.client.post(f"/v1/bookings/{bid}/cancel", headers=api.auth())
    assert r.status == 200
    cancelled = await r.json()
    assert cancelled["status"] == "cancelled"
    assert {s["status"] for s in cancelled["sessions"]} == {"cancelled"}
    await problem_of(await api.client.patch(f"/v1/bookings/{bid}", json={"notes": "x"}, headers=api.auth()), 409)

    lst = await (await api.client.get("/v1/bookings?status=cancelled", headers=api.auth())).json()
    assert [b["booking_id"] for b in lst["items"]] == [bid]
    sessions = await (await api.client.get(f"/v1/sessions?booking_id={bid}", headers=api.auth())).json()
    assert len(sessions["items"]) == 3
    deliveries = await api.store.claim_due_deliveries(limit=10)
    types = [d.event.event_type for d in deliveries]
    assert types == ["booking.created", "booking.created"]  # the rest wait behind the first of their booking
    resched = [d for d in await _all_events(api) if d[0] == "booking.rescheduled"]
    assert resched[0][1]["old"] == {"start": START, "duration_minutes": 60}
    assert resched[0][1]["new"] == {"start": "2030-03-04T14:00:00Z", "duration_minutes": 45}


async def _all_events(api: Api) -> list[tuple[str, dict[str, Any]]]:
    import sqlalchemy as sa

    from orchestrator.store import schema as t

    async with api.store.engine.connect() as c:
        rows = await c.execute(sa.select(t.webhook_outbox.c.event_type, t.webhook_outbox.c.payload))
        return [(r[0], r[1]) for r in rows]


async def test_idempotency_key_replays_and_rejects_a_different_body(api: Api) -> None:
    await seed(api)
    h = {**api.auth(), "Idempotency-Key": "order-42"}
    body = {
        "subject_id": "math",
        "student_ids": ["stu_1"],
        "instructor_id": "ins_a",
        "start": START,
        "duration_minutes": 60,
    }
    r1 = await api.client.post("/v1/bookings", json=body, headers=h)
    r2 = await api.client.post("/v1/bookings", json=body, headers=h)
    assert r1.status == r2.status == 201
    assert (await r1.json()) == (await r2.json())
    assert r2.headers["Idempotent-Replayed"] == "true"
    listed = await (await api.client.get("/v1/bookings", headers=api.auth())).json()
    assert len(listed["items"]) == 1
    r3 = await api.client.post("/v1/bookings", json={**body, "notes": "different"}, headers=h)
    assert "different request" in (await problem_of(r3, 422))["detail"]
    # errors are replayed too, and keys belong to one API key
    h2 = {**api.auth(), "Idempotency-Key": "bad-1"}
    assert (await api.client.post("/v1/subjects", json={"nam": "x"}, headers=h2)).status == 422
    replay = await api.client.post("/v1/subjects", json={"nam": "x"}, headers=h2)
    await problem_of(replay, 422)
    assert replay.headers["Idempotent-Replayed"] == "true"
    _, other = await create_api_key(api.store, "other", ["admin"])
    r4 = await api.client.post(
        "/v1/subjects", json={"name": "Art"}, headers={**api.auth(other), "Idempotency-Key": "order-42"}
    )
    assert r4.status == 201
    await problem_of(
        await api.client.post("/v1/subjects", json={"name": "A"}, headers={**h, "Idempotency-Key": "é"}), 400
    )


async def test_join_link_minted_through_the_hook(make_api: ApiFactory) -> None:
    calls: list[tuple[str, str, str]] = []

    async def mint(session: Session, participant_id: str, role: str) -> tuple[str, str, datetime]:
        calls.append((session.session_id, participant_id, role))
        return f"https://class.example/{session.session_id}", f"tok-{participant_id}", session.end + timedelta(hours=1)

    api = await make_api(ApiHooks(mint_join_link=mint))
    await seed(api)
    booking = await (await post_booking(api, student_ids=["stu_1", "stu_2"])).json()
    sid = booking["sessions"][0]["session_id"]
    r = await api.client.post(
        f"/v1/sessions/{sid}/join-links", json={"participant_id": "stu_2", "role": "student"}, headers=api.auth()
    )
    assert r.status == 201, await r.text()
    link = await r.json()
    assert link == {"url": f"https://class.example/{sid}", "token": "tok-stu_2", "expires_at": "2030-03-04T11:00:00Z"}
    assert calls == [(sid, "stu_2", "student")]
    body = await problem_of(
        await api.client.post(
            f"/v1/sessions/{sid}/join-links", json={"participant_id": "stu_2", "role": "instructor"}, headers=api.auth()
        ),
        422,
    )
    assert body["errors"][0]["pointer"] == "/participant_id"
    await problem_of(
        await api.client.post(
            "/v1/sessions/ses_missing/join-links",
            json={"participant_id": "stu_2", "role": "student"},
            headers=api.auth(),
        ),
        404,
    )
    detail = await (await api.client.get(f"/v1/sessions/{sid}", headers=api.auth())).json()
    assert detail["attendance"] == [] and detail["recording_info"] is None


async def test_default_join_link_is_a_signed_jwt(api: Api) -> None:
    await seed(api)
    booking = await (await post_booking(api)).json()
    sid = booking["sessions"][0]["session_id"]
    r = await api.client.post(
        f"/v1/sessions/{sid}/join-links", json={"participant_id": "ins_a", "role": "instructor"}, headers=api.auth()
    )
    link = await r.json()
    import jwt

    claims = jwt.decode(link["token"], options={"verify_signature": False})
    assert claims["sid"] == sid and claims["role"] == "instructor"
    assert await api.store.get_join_link(claims["jti"]) is not None


async def test_scheduling_hook_rule_violation_and_change_notification(make_api: ApiFactory) -> None:
    changes: list[BookingChange] = []

    async def validate(draft: BookingDraft) -> list[Occurrence]:
        if draft.duration_minutes > 90:
            raise RuleViolation("daily_cap", "ins_a already teaches 6 sessions that day", 409, "ses_x")
        start = draft.start
        return [Occurrence(0, start, start + timedelta(minutes=draft.duration_minutes), "ins_b")]  # type: ignore[arg-type]

    async def changed(change: BookingChange) -> None:
        changes.append(change)

    api = await make_api(ApiHooks(validate_and_assign=validate, on_booking_changed=changed))
    await seed(api)
    body = await problem_of(await post_booking(api, duration_minutes=120), 409)
    assert body["code"] == "daily_cap" and body["conflicting_session_id"] == "ses_x"
    r = await post_booking(api, instructor_id=None)
    assert r.status == 201, await r.text()
    booking = await r.json()
    assert booking["instructor_id"] is None and booking["sessions"][0]["instructor_id"] == "ins_b"
    await api.client.post(f"/v1/bookings/{booking['booking_id']}/cancel", json={"reason": "ill"}, headers=api.auth())
    assert [c.kind for c in changes] == ["created", "cancelled"]


async def test_instructor_and_student_patch_merge(api: Api) -> None:
    await seed(api)
    r = await api.client.patch(
        "/v1/instructors/ins_a",
        json={"max_sessions_per_day": 4, "weekly_availability": [{"weekday": 1, "start": "10:00", "end": "09:00"}]},
        headers=api.auth(),
    )
    assert (await problem_of(r, 422))["errors"][0]["pointer"] == "/weekly_availability/0"
    r = await api.client.patch("/v1/instructors/ins_a", json={"max_sessions_per_day": 4}, headers=api.auth())
    inst = await r.json()
    assert inst["max_sessions_per_day"] == 4 and inst["buffer_minutes"] == 10 and inst["qualifications"]
    r = await api.client.patch("/v1/students/stu_1", json={"country": None}, headers=api.auth())
    assert (await problem_of(r, 422))["errors"][0]["pointer"] == "/country"
    r = await api.client.patch(
        "/v1/students/stu_1", json={"country": None, "latitude": 35.7, "longitude": 139.7}, headers=api.auth()
    )
    assert r.status == 200 and (await r.json())["latitude"] == 35.7
    await problem_of(await api.client.patch("/v1/students/stu_9", json={"name": "x"}, headers=api.auth()), 404)
    await problem_of(await api.client.patch("/v1/students/stu_1", json={}, headers=api.auth()), 422)


async def test_webhook_subscription_crud(api: Api) -> None:
    h = api.auth()
    r = await api.client.post(
        "/v1/webhooks", json={"url": "https://hooks.example/cm", "event_types": ["booking.created"]}, headers=h
    )
    assert r.status == 201
    sub = await r.json()
    assert sub["secret"].startswith("whsec_")
    sid = sub["subscription_id"]
    got = await (await api.client.get(f"/v1/webhooks/{sid}", headers=h)).json()
    assert "secret" not in got and got["event_types"] == ["booking.created"]
    r = await api.client.patch(f"/v1/webhooks/{sid}", json={"active": False}, headers=h)
    assert (await r.json())["active"] is False
    await problem_of(await api.client.post("/v1/webhooks", json={"url": "ftp://x"}, headers=h), 422)
    await problem_of(
        await api.client.post("/v1/webhooks", json={"url": "https://x", "event_types": ["nope"]}, headers=h), 422
    )
    assert (await api.client.delete(f"/v1/webhooks/{sid}", headers=h)).status == 204
    await problem_of(await api.client.get(f"/v1/webhooks/{sid}", headers=h), 404)


async def test_request_metrics_use_route_templates(api: Api) -> None:
    def count(route: str, status_class: str) -> float:
        v = REGISTRY.get_sample_value(
            "classmesh_orchestrator_api_requests_total", {"route": route, "method": "GET", "status_class": status_class}
        )
        return v or 0.0

    before = count("/v1/subjects/{subject_id}", "4xx")
    await api.client.get("/v1/subjects/abc", headers=api.auth())
    await api.client.get("/v1/subjects/def", headers=api.auth())
    assert count("/v1/subjects/{subject_id}", "4xx") == before + 2
