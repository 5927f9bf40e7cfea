"""The engagement endpoints over HTTP on a real store: a session's per-person view, a student's sessions, and
their errors and scopes."""

from __future__ import annotations

import pytest

from orchestrator.api import create_api_key
from orchestrator.store.engagement import EngagementEvent
from tests.orchestrator.api.conftest import ApiFactory
from tests.orchestrator.test_engagement import T0, at
from tests.orchestrator.test_provisioning import book


async def test_engagement_api(make_api: ApiFactory) -> None:
    api = await make_api()
    session_id = await book(api.store, T0)
    await api.store.record_join(session_id, "s1", "student", at=at(2))
    await api.store.record_leave(session_id, "s1", at=at(32))
    source = "ses|p_s1|eu-1|data|1.0"
    event = EngagementEvent(session_id, "s1", "student", "chat", at(3))
    assert await api.store.record_engagement(event, source)
    assert not await api.store.record_engagement(event, source)  # the same node event again
    with pytest.raises(ValueError):
        await api.store.record_engagement(EngagementEvent(session_id, "s1", "student", "nap", at(4)), "x")

    resp = await api.client.get(f"/v1/sessions/{session_id}/engagement", headers=api.auth())
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["session_id"] == session_id and [p["participant_id"] for p in body["participants"]] == ["ins", "s1"]
    s1 = body["participants"][1]
    assert s1["attended_s"] == 1800 and s1["attendance_fraction"] == 0.5 and s1["chat_messages"] == 1
    assert s1["first_joined_at"] == "2030-03-04T09:02:00Z"
    assert body["participants"][0]["attended_s"] == 0  # the instructor never came

    resp = await api.client.get("/v1/students/s1/engagement", headers=api.auth())
    assert resp.status == 200, await resp.text()
    page = await resp.json()
    assert [i["session_id"] for i in page["items"]] == [session_id] and page["next_cursor"] is None
    assert page["items"][0]["engagement"]["participant_id"] == "s1"
    assert page["items"][0]["engagement"]["chat_messages"] == 1
    resp = await api.client.get(
        "/v1/students/s1/engagement", params={"start_from": "2030-03-05T00:00:00Z"}, headers=api.auth()
    )
    assert (await resp.json())["items"] == []

    # errors: unknown ids, a bad query, a key without the scope, no key
    for path, status in (
        ("/v1/sessions/ses_nope/engagement", 404),
        ("/v1/students/nobody/engagement", 404),
        ("/v1/students/s1/engagement?start_from=yesterday", 400),
        ("/v1/students/s1/engagement?limit=0", 400),
    ):
        resp = await api.client.get(path, headers=api.auth())
        assert resp.status == status, (path, await resp.text())
        assert resp.content_type == "application/problem+json"
    _, narrow = await create_api_key(api.store, "bookings only", ["bookings:read"])
    resp = await api.client.get(f"/v1/sessions/{session_id}/engagement", headers=api.auth(narrow))
    assert resp.status == 403
    resp = await api.client.get(f"/v1/sessions/{session_id}/engagement")
    assert resp.status == 401
