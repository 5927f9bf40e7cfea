"""The booking API with the scheduling engine at its seam: every write obeys the hard rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.api import ApiHooks
from orchestrator.scheduling_gate import SchedulingGate
from tests.orchestrator.api.conftest import Api, ApiFactory


@pytest.fixture
async def gated(make_api: ApiFactory) -> Api:
    api = await make_api(hooks=None)
    gate = SchedulingGate(api.store)
    gated_api = await make_api(hooks=ApiHooks(validate_and_assign=gate.validate_and_assign, match=gate.match))
    await seed(gated_api)
    return gated_api


async def post(api: Api, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await api.client.post(f"/v1{path}", json=body, headers=api.auth())
    return resp.status, await resp.json()


async def seed(api: Api) -> None:
    await post(api, "/subjects", {"subject_id": "math", "name": "Maths"})
    await post(api, "/subjects", {"subject_id": "art", "name": "Art"})
    weekdays = [{"weekday": d, "start": "09:00", "end": "17:00"} for d in range(5)]
    for iid, tz, quals in (
        ("ny", "America/New_York", [{"subject_id": "math", "max_level": 5}]),
        ("ldn", "Europe/London", [{"subject_id": "math", "max_level": 2}, {"subject_id": "art", "max_level": 5}]),
    ):
        status, body = await post(
            api,
            "/instructors",
            {
                "instructor_id": iid,
                "name": iid.upper(),
                "email": f"{iid}@example.org",
                "time_zone": tz,
                "qualifications": quals,
                "weekly_availability": weekdays,
                "buffer_minutes": 15,
                "max_sessions_per_day": 3,
                "max_sessions_per_week": 10,
            },
        )
        assert status == 201, body
    for sid, level in (("s1", 4), ("s2", 1)):
        status, body = await post(
            api,
            "/students",
            {
                "student_id": sid,
                "name": sid,
                "time_zone": "Europe/Berlin",
                "country": "DE",
                "levels": [{"subject_id": "math", "level": level}, {"subject_id": "art", "level": 1}],
            },
        )
        assert status == 201, body


def booking(
    start: str,
    *,
    instructor: str | None = "ny",
    students: tuple[str, ...] = ("s1",),
    subject: str = "math",
    minutes: int = 60,
    rrule: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject_id": subject,
        "student_ids": list(students),
        "start": start,
        "duration_minutes": minutes,
    }
    if instructor:
        body["instructor_id"] = instructor
    if rrule:
        body["rrule"] = rrule
    return body


async def test_availability_is_checked_in_the_instructors_time_zone_across_dst(gated: Api) -> None:
    # 13:30 UTC is 09:30 in New York in July (EDT) but 08:30 in January (EST)
    status, body = await post(gated, "/bookings", booking("2031-07-07T13:30:00Z"))
    assert status == 201, body
    status, body = await post(gated, "/bookings", booking("2031-01-06T13:30:00Z"))
    assert status == 422 and body["code"] == "outside_availability", body


async def test_qualification_level_is_enforced(gated: Api) -> None:
    # ldn teaches maths only up to level 2; s1 is at level 4
    status, body = await post(gated, "/bookings", booking("2031-07-07T10:00:00Z", instructor="ldn"))
    assert status == 422 and body["code"] == "not_qualified", body
    status, body = await post(gated, "/bookings", booking("2031-07-07T10:00:00Z", instructor="ldn", students=("s2",)))
    assert status == 201, body


async def test_double_booking_and_buffer_name_the_conflicting_session(gated: Api) -> None:
    status, first = await post(gated, "/bookings", booking("2031-07-07T14:00:00Z"))
    assert status == 201
    held = first["sessions"][0]["session_id"]
    status, body = await post(gated, "/bookings", booking("2031-07-07T14:30:00Z", students=("s2",)))
    assert status == 409 and body["code"] == "instructor_double_booked" and body["conflicting_session_id"] == held
    # 15:05 is inside the 15-minute buffer after the 14:00-15:00 session
    status, body = await post(gated, "/bookings", booking("2031-07-07T15:05:00Z", students=("s2",)))
    assert status == 409 and body["code"] in ("buffer_violated", "instructor_double_booked"), body
    status, body = await post(gated, "/bookings", booking("2031-07-07T15:15:00Z", students=("s2",)))
    assert status == 201, body


async def test_daily_cap_and_series_conflicts_are_reported_per_occurrence(gated: Api) -> None:
    for hour in (13, 15):
        status, _ = await post(gated, "/bookings", booking(f"2031-07-08T{hour}:00:00Z", students=("s2",)))
        assert status == 201
    status, body = await post(gated, "/bookings", booking("2031-07-08T17:00:00Z"))
    assert status == 201  # the third of the day (cap 3)
    # a weekly series whose second occurrence would be the fourth session that Tuesday
    status, body = await post(
        gated, "/bookings", booking("2031-07-01T19:00:00Z", rrule="FREQ=WEEKLY;COUNT=3", students=("s1",))
    )
    assert status == 422 and body["code"] == "daily_cap_exceeded", body
    assert list(body["occurrences"]) == ["1"]


async def test_without_an_instructor_the_best_feasible_one_is_assigned(gated: Api) -> None:
    status, body = await post(gated, "/bookings", booking("2031-07-09T10:00:00Z", instructor=None, subject="art"))
    assert status == 201 and body["sessions"][0]["instructor_id"] == "ldn", body
    status, ranked = await post(gated, "/matches", booking("2031-07-10T14:00:00Z", instructor=None, students=("s2",)))
    assert status == 200 and ranked["feasible"]
    assert {c["instructor_id"] for c in ranked["candidates"]} == {"ny", "ldn"}
    assert all(c["reasons"] and all(r["detail"] for r in c["reasons"]) for c in ranked["candidates"])
    # nobody teaches art on a Sunday: no candidate, the failure counts and nearby alternatives instead
    status, none = await post(gated, "/matches", booking("2031-07-13T10:00:00Z", instructor=None, subject="art"))
    assert status == 200 and not none["feasible"] and none["candidates"] == []
    assert none["failure_counts"].get("outside_availability", 0) >= 1 and none["alternatives"]
    status, body = await post(gated, "/bookings", booking("2031-07-13T10:00:00Z", instructor=None, subject="art"))
    assert status == 409 and body["code"] == "no_feasible_instructor", body


async def test_fifty_concurrent_requests_for_one_slot_book_exactly_once(gated: Api) -> None:
    results = await asyncio.gather(
        *(post(gated, "/bookings", booking("2031-07-11T14:00:00Z", students=(f"s{1 + i % 2}",))) for i in range(50))
    )
    statuses = [s for s, _ in results]
    assert statuses.count(201) == 1 and statuses.count(409) == 49, statuses
