"""Reschedules and cancellations cascade through everything a provisioned session holds: its room, its recording
jobs, its pending notifications. Nothing orphaned remains (the whole orchestrator, in process, through the API)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp

from core.messages import room_key
from orchestrator.api.keys import create_api_key
from orchestrator.store.models import ACTIVE_JOB_STATUSES, SessionStatus
from orchestrator.store.notifications import NotificationKind, NotificationStatus
from tests.e2e.test_recording import book_recorded


async def orphans(stack: Any, session_id: str) -> list[str]:
    """What still holds on to the session as it was before it moved or was cancelled."""
    store = stack.orchestrator.store
    session = await store.get_session(session_id)
    found = []
    if session.status in (SessionStatus.SCHEDULED, SessionStatus.CANCELLED):
        if await stack.bus.kv_get(room_key(session_id)) is not None:
            found.append("its room is still placed on a node")
        active = [j.copy_id for j in await store.recording_jobs(session_id) if j.status in ACTIVE_JOB_STATUSES]
        if active:
            found.append(f"recording jobs still active: {active}")
    for n in await stack.orchestrator.notifier.notifications.of_session(session_id):
        if n.status is not NotificationStatus.PENDING or n.kind is NotificationKind.SESSION_CHANGED:
            continue
        if session.status is SessionStatus.CANCELLED:
            found.append(f"{n.kind.value} to {n.recipient_id} still pending for a cancelled session")
        elif n.session_start != session.start:
            found.append(f"{n.kind.value} to {n.recipient_id} still planned for the old start {n.session_start}")
    return found


async def test_moving_then_cancelling_a_provisioned_recorded_session_leaves_nothing_behind(stack: Any) -> None:
    orchestrator = stack.orchestrator
    store = orchestrator.store
    session_id = await book_recorded(store, "cascade")
    session = await store.get_session(session_id)
    await orchestrator.provisioner.provision_due()
    await orchestrator.recordings.tick()
    await orchestrator.notifier.plan(session_id)
    assert await stack.bus.kv_get(room_key(session_id)) is not None
    assert [j.copy_id for j in await store.recording_jobs(session_id)] == ["a1", "b1"]
    assert await orchestrator.notifier.notifications.of_session(session_id)

    _, key = await create_api_key(store, "booking system", ["admin"])
    api = f"{stack.orchestrator_url}/v1"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        # move it two days later: beyond the provisioning lead time
        new_start = (session.start + timedelta(days=2)).isoformat().replace("+00:00", "Z")
        async with http.patch(f"{api}/bookings/{session.booking_id}", json={"start": new_start}) as resp:
            assert resp.status == 200, await resp.text()
        await orchestrator.recordings.tick()
        moved = await store.get_session(session_id)
        assert moved.status is SessionStatus.SCHEDULED and moved.start > session.start
        assert await orphans(stack, session_id) == []
        assert await store.recording_jobs(session_id) == []
        kinds = {n.kind.value for n in await orchestrator.notifier.notifications.of_session(session_id)}
        assert "session_changed" in kinds  # everyone is told about the move

        # then cancel it
        async with http.post(f"{api}/bookings/{session.booking_id}/cancel", json={"reason": "ill"}) as resp:
            assert resp.status == 200, await resp.text()
        await orchestrator.recordings.tick()
        assert (await store.get_session(session_id)).status is SessionStatus.CANCELLED
        assert await orphans(stack, session_id) == []
