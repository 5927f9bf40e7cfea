"""The session document endpoints over HTTP on a real store: read the draft, complete it, errors and scopes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.api import create_api_key
from orchestrator.documentation import Documenter
from orchestrator.store.models import ExceptionStatus
from tests.orchestrator.api.conftest import ApiFactory
from tests.orchestrator.test_documentation import ended_session


async def test_document_endpoints(make_api: ApiFactory) -> None:
    api = await make_api()
    session_id = await ended_session(api.store, hours_ago=30)
    path = f"/v1/sessions/{session_id}/document"
    resp = await api.client.get(path, headers=api.auth())
    assert resp.status == 404  # not drafted yet
    documenter = Documenter(api.store)
    await documenter.run_once()
    await documenter.run_once(datetime.now(UTC) + timedelta(hours=25))  # still a draft a day on
    assert await api.store.exception_by_key(f"documentation_missing:{session_id}") is not None
    resp = await api.client.get(path, headers=api.auth())
    assert resp.status == 200 and (await resp.json())["status"] == "draft"

    _, reader = await create_api_key(api.store, "reader", ["sessions:read"])
    done = {"notes": "Covered fractions; Sam missed it, send the worksheet.", "curriculum_covered": "fractions-1"}
    resp = await api.client.put(f"{path}/completion", json=done, headers=api.auth(reader))
    assert resp.status == 403
    for bad in ({}, {"notes": ""}, {"notes": "x", "extra": 1}, {"notes": 5}):
        resp = await api.client.put(f"{path}/completion", json=bad, headers=api.auth())
        assert resp.status == 422, bad
    assert (await api.store.get_document(session_id)).status == "draft"  # bad input changed nothing
    resp = await api.client.put(f"{path}/completion", json=done, headers=api.auth())
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["status"], body["notes"], body["curriculum_covered"], body["completed_by"]) == (
        "completed",
        done["notes"],
        "fractions-1",
        "ins",
    )
    assert body["draft"]["session_id"] == session_id
    missing = await api.store.exception_by_key(f"documentation_missing:{session_id}")
    assert missing is not None and missing.status is ExceptionStatus.RESOLVED
    resp = await api.client.put("/v1/sessions/ses_nope/document/completion", json=done, headers=api.auth())
    assert resp.status == 404
