"""The operational endpoints on a running orchestrator: the node table, imbalance and the calendar forecast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from orchestrator.api.keys import create_api_key
from orchestrator.store.models import BookingDraft, Instructor, Occurrence, Student, Subject, WeeklyWindow


async def test_nodes_and_forecast_need_the_ops_scope_and_report_the_fleet(stack: Any) -> None:
    store = stack.orchestrator.store
    _, ops_key = await create_api_key(store, "ops", ["ops:read"])
    _, booking_key = await create_api_key(store, "booking", ["bookings:read"])
    api = f"{stack.orchestrator_url}/v1"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api}/nodes") as resp:
            assert resp.status == 401
        async with http.get(f"{api}/nodes", headers={"Authorization": f"Bearer {booking_key}"}) as resp:
            assert resp.status == 403 and resp.content_type == "application/problem+json"
        async with http.get(f"{api}/nodes", headers={"Authorization": f"Bearer {ops_key}"}) as resp:
            nodes = await resp.json()
        media = {n["node_id"]: n for n in nodes["items"] if n["kind"] == "media"}
        assert set(media) == {"eu-central-1", "us-east-1"}
        assert nodes["imbalance"] == {"eu-central": 0.0, "us-east": 0.0} and nodes["hot_nodes"] == []

        # a 6-person class in Berlin starting in two hours shows up in eu-central's forecast
        await store.create_subject(Subject("math", "Maths"))
        await store.create_instructor(
            Instructor(
                "ins",
                "Ada",
                "ada@example.org",
                "Europe/Berlin",
                {"math": 5},
                tuple(WeeklyWindow(d, "00:00", "24:00") for d in range(7)),
            )  # type: ignore[arg-type]
        )
        students = [f"s{i}" for i in range(5)]
        for sid in students:
            await store.create_student(Student(sid, sid, "Europe/Berlin", country="DE", levels={"math": 1}))  # type: ignore[arg-type]
        start = (datetime.now(UTC) + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
        draft = BookingDraft(
            subject_id="math",
            student_ids=tuple(students),
            instructor_id="ins",
            start=start,  # type: ignore[arg-type]
            duration_minutes=60,
        )
        await store.create_booking(draft, [Occurrence(0, start, start + timedelta(hours=1), "ins")])  # type: ignore[arg-type]
        async with http.get(f"{api}/forecast?hours=4", headers={"Authorization": f"Bearer {ops_key}"}) as resp:
            assert resp.status == 200
            forecast = await resp.json()
        eu = next(r for r in forecast["regions"] if r["region"] == "eu-central")
        us = next(r for r in forecast["regions"] if r["region"] == "us-east")
        busy = [s for s in eu["slots"] if s["sessions"]]
        assert busy and all(s["participants"] == 6 and s["streams"] == 60 for s in busy)
        assert eu["nodes_serving"] == 1 and eu["peak_nodes_needed"] == 1
        assert not any(s["sessions"] for s in us["slots"])
        async with http.get(f"{api}/forecast?hours=99", headers={"Authorization": f"Bearer {ops_key}"}) as resp:
            assert resp.status == 400
