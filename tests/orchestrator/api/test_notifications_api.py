"""GET /v1/notifications and GET /v1/sessions/{id}/notifications over HTTP, on a real store."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.api import create_api_key
from orchestrator.api.hooks import default_mint_join_link
from orchestrator.notifications import Notifier
from orchestrator.store.notifications import NotificationStatus
from tests.orchestrator.api.conftest import Api
from tests.orchestrator.test_notifications import T0, move, seed


async def planned(api: Api) -> str:
    """A session planned, then moved (so its reminders for the old time are cancelled) and planned again."""
    session = await seed(api.store)
    notifier = Notifier(api.store, mint_join_link=default_mint_join_link)
    await notifier.plan(session.session_id, now=T0 - timedelta(days=3))
    await move(api.store, session, T0 + timedelta(days=1))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=2))
    return session.session_id


async def test_lists_notifications_by_due_time_with_filters_and_pages(api: Api) -> None:
    session_id = await planned(api)
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        url = "/v1/notifications?limit=4" + (f"&cursor={cursor}" if cursor else "")
        resp = await api.client.get(url, headers=api.auth())
        assert resp.status == 200
        body = await resp.json()
        assert len(body["items"]) <= 4
        seen += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    # 11 planned for the old time (6 reminders now cancelled), 6 reminders for the new one, 3 change notices
    assert len(seen) == 20 and len({n["notification_id"] for n in seen}) == 20
    assert [n["due_at"] for n in seen] == sorted(n["due_at"] for n in seen)
    resp = await api.client.get(
        f"/v1/notifications?session_id={session_id}&status=cancelled&kind=reminder", headers=api.auth()
    )
    cancelled = (await resp.json())["items"]
    assert len(cancelled) == 6
    assert {(n["status"], n["kind"], n["last_error"]) for n in cancelled} == {
        ("cancelled", "reminder", "the session was moved")
    }
    resp = await api.client.get(f"/v1/sessions/{session_id}/notifications?kind=session_changed", headers=api.auth())
    changed = (await resp.json())["items"]
    assert {n["recipient_id"] for n in changed} == {"ins_a", "stu_1", "stu_2"}
    assert all(n["details"]["changes"] == ["rescheduled"] and n["status"] == "pending" for n in changed)
    assert set(changed[0]) >= {"due_at", "session_start", "attempts", "channel", "address", "join_link_jti"}
    assert NotificationStatus.PENDING.value == changed[0]["status"]


async def test_notification_endpoints_check_scope_session_and_parameters(api: Api) -> None:
    session_id = await planned(api)
    _, reader = await create_api_key(api.store, "bookings only", ["bookings:read", "sessions:read"])
    resp = await api.client.get("/v1/notifications", headers=api.auth(reader))
    assert resp.status == 403 and "notifications:read" in (await resp.json())["detail"]
    resp = await api.client.get(f"/v1/sessions/{session_id}/notifications", headers=api.auth(reader))
    assert resp.status == 403
    resp = await api.client.get("/v1/notifications")
    assert resp.status == 401
    _, ok = await create_api_key(api.store, "notifications", ["notifications:read"])
    resp = await api.client.get("/v1/sessions/ses_nope/notifications", headers=api.auth(ok))
    assert resp.status == 404 and resp.content_type == "application/problem+json"
    for query, field in (("status=lost", "status"), ("kind=sms", "kind"), ("cursor=zzz", "cursor"), ("x=1", "x")):
        resp = await api.client.get(f"/v1/notifications?{query}", headers=api.auth(ok))
        assert resp.status == 400, query
        problem = await resp.json()
        assert field in [e["pointer"] for e in problem.get("errors", [])], problem
    resp = await api.client.get(f"/v1/notifications?session_id={session_id}&status=sent", headers=api.auth(ok))
    assert resp.status == 200 and (await resp.json()) == {"items": [], "next_cursor": None}
