"""Operations on single occurrences of a recurring booking: skip, move one, move this-and-following, cancel from.

Real HTTP, real store (SQLite and PostgreSQL), the real scheduling engine at the seam.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from orchestrator.store import Store
from orchestrator.store.models import SessionStatus
from tests.orchestrator.api.conftest import ApiFactory
from tests.orchestrator.api.scheduling_helpers import Org, make_org

BERLIN = ZoneInfo("Europe/Berlin")
# Mondays 11:00 in Berlin: 10:00 UTC on 17 and 24 March 2031, 09:00 UTC on 31 March and 7 April (summer time)
SERIES_START = "2031-03-17T10:00:00Z"
WEEKLY_4 = "FREQ=WEEKLY;COUNT=4"


@pytest.fixture
async def org(make_api: ApiFactory, store: Store) -> Org:
    return await make_org(make_api, store)


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _local(text: str) -> str:
    return _when(text).astimezone(BERLIN).strftime("%a %H:%M")


async def test_the_series_is_booked_in_local_time_across_the_dst_change(org: Org) -> None:
    booking = await org.book(SERIES_START, rrule=WEEKLY_4)
    starts = [s["start"] for s in booking["sessions"]]
    assert starts == ["2031-03-17T10:00:00Z", "2031-03-24T10:00:00Z", "2031-03-31T09:00:00Z", "2031-04-07T09:00:00Z"]
    assert {_local(s) for s in starts} == {"Mon 11:00"}


async def test_skipping_an_occurrence_cancels_its_session_frees_its_slot_and_is_harmless_twice(org: Org) -> None:
    booking = await org.book(SERIES_START, rrule=WEEKLY_4)
    bid, second = booking["booking_id"], booking["sessions"][1]["session_id"]
    status, body = await org.post(f"/bookings/{bid}/occurrences/{second}/skip", {"reason": "school trip"})
    assert status == 200, body
    assert [s["status"] for s in body["sessions"]] == ["scheduled", "cancelled", "scheduled", "scheduled"]
    assert body["status"] == "active"
    assert await org.occupancy_of(second) == set()
    cancelled = await org.events("booking.cancelled")
    assert len(cancelled) == 1
    assert cancelled[0]["cancelled_session_ids"] == [second] and cancelled[0]["scope"] == "occurrence"
    assert cancelled[0]["reason"] == "school trip"
    assert org.recorded.changes[-1].kind == "updated"
    assert {s.session_id: s.status for s in org.recorded.changes[-1].sessions}[second] is SessionStatus.CANCELLED
    # the slot is free again: the same instructor and student can be booked then
    await org.book("2031-03-24T10:00:00Z")
    # skipping again changes nothing and emits nothing
    status, again = await org.post(f"/bookings/{bid}/occurrences/{second}/skip")
    assert status == 200 and again["sessions"] == body["sessions"]
    assert len(await org.events("booking.cancelled")) == 1


async def test_moving_one_occurrence_moves_only_it_and_reports_old_and_new_times(org: Org) -> None:
    booking = await org.book(SERIES_START, rrule=WEEKLY_4)
    bid, second = booking["booking_id"], booking["sessions"][1]["session_id"]
    status, body = await org.post(
        f"/bookings/{bid}/occurrences/{second}/move", {"start": "2031-03-25T14:00:00Z", "scope": "this"}
    )
    assert status == 200, body
    by_id = {s["session_id"]: s for s in body["sessions"]}
    assert by_id[second]["start"] == "2031-03-25T14:00:00Z" and by_id[second]["end"] == "2031-03-25T15:00:00Z"
    others = [s["start"] for s in body["sessions"] if s["session_id"] != second]
    assert others == ["2031-03-17T10:00:00Z", "2031-03-31T09:00:00Z", "2031-04-07T09:00:00Z"]
    (event,) = await org.events("booking.rescheduled")
    assert event["scope"] == "this"
    assert event["old"]["start"] == "2031-03-24T10:00:00Z" and event["new"]["start"] == "2031-03-25T14:00:00Z"
    assert event["occurrences"] == [
        {
            "session_id": second,
            "occurrence_index": 1,
            "old": {"start": "2031-03-24T10:00:00Z", "end": "2031-03-24T11:00:00Z"},
            "new": {"start": "2031-03-25T14:00:00Z", "end": "2031-03-25T15:00:00Z"},
        }
    ]
    assert org.recorded.changes[-1].kind == "rescheduled"
    # the old slot is free, the new one is held
    await org.book("2031-03-24T10:00:00Z")
    status, clash = await org.post(
        "/bookings",
        {
            "subject_id": "math",
            "student_ids": ["s2"],
            "instructor_id": "ana",
            "start": "2031-03-25T14:30:00Z",
            "duration_minutes": 30,
        },
    )
    assert status == 409 and clash["conflicting_session_id"] == second, clash


async def test_moving_this_and_following_keeps_the_new_local_time_across_dst(org: Org) -> None:
    booking = await org.book(SERIES_START, rrule=WEEKLY_4)
    bid, sessions = booking["booking_id"], booking["sessions"]
    # from the second occurrence on: 11:00 -> 13:00 on Tuesdays, Berlin time
    status, body = await org.post(
        f"/bookings/{bid}/occurrences/{sessions[1]['session_id']}/move",
        {"start": "2031-03-25T12:00:00Z", "scope": "following"},
    )
    assert status == 200, body
    starts = [s["start"] for s in sorted(body["sessions"], key=lambda s: s["occurrence_index"])]
    assert starts == ["2031-03-17T10:00:00Z", "2031-03-25T12:00:00Z", "2031-04-01T11:00:00Z", "2031-04-08T11:00:00Z"]
    assert [_local(s) for s in starts[1:]] == ["Tue 13:00"] * 3
    (event,) = await org.events("booking.rescheduled")
    assert event["scope"] == "following" and [o["occurrence_index"] for o in event["occurrences"]] == [1, 2, 3]
    assert await org.findings() == []


async def test_a_move_that_breaks_a_rule_changes_nothing_and_names_the_conflict(org: Org) -> None:
    booking = await org.book(SERIES_START, rrule=WEEKLY_4)
    bid, second = booking["booking_id"], booking["sessions"][1]["session_id"]
    other = await org.book("2031-03-26T10:00:00Z", students=("s2",))
    held = other["sessions"][0]["session_id"]
    status, body = await org.post(f"/bookings/{bid}/occurrences/{second}/move", {"start": "2031-03-26T10:30:00Z"})
    assert status == 409, body
    assert body["code"] == "instructor_double_booked" and body["conflicting_session_id"] == held
    assert body["occurrences"]["1"][0]["session_id"] == second
    assert body["occurrences"]["1"][0]["conflicting_session_id"] == held
    # outside the instructor's availability (Saturday) is a 422 with the rule
    status, body = await org.post(f"/bookings/{bid}/occurrences/{second}/move", {"start": "2031-03-29T10:00:00Z"})
    assert status == 422 and body["code"] == "outside_availability", body
    status, after = await org.get(f"/bookings/{bid}")
    assert [s["start"] for s in after["sessions"]] == [s["start"] for s in booking["sessions"]]
    assert await org.events("booking.rescheduled") == []
    assert org.recorded.changes[-1].booking.booking_id == other["booking_id"]  # nothing announced for the move
    assert await org.occupancy_of(second)  # still holds its slots


async def test_this_and_following_reports_every_conflicting_occurrence(org: Org) -> None:
    booking = await org.book(SERIES_START, rrule=WEEKLY_4)
    bid, sessions = booking["booking_id"], booking["sessions"]
    # s1 is busy with another instructor at the shifted times of the third and fourth occurrences
    await org.book("2031-04-01T11:00:00Z", instructor="ben")
    await org.book("2031-04-08T11:30:00Z", instructor="ben")
    status, body = await org.post(
        f"/bookings/{bid}/occurrences/{sessions[1]['session_id']}/move",
        {"start": "2031-03-25T12:00:00Z", "scope": "following"},
    )
    assert status == 409, body
    assert body["code"] == "student_double_booked"
    assert sorted(body["occurrences"]) == ["2", "3"]
    assert all(v["rule"] == "student_double_booked" for vs in body["occurrences"].values() for v in vs)
    status, after = await org.get(f"/bookings/{bid}")
    assert [s["start"] for s in after["sessions"]] == [s["start"] for s in sessions]


async def test_cancel_from_an_occurrence_on_keeps_the_earlier_ones(org: Org) -> None:
    booking = await org.book(SERIES_START, rrule=WEEKLY_4)
    bid, sessions = booking["booking_id"], booking["sessions"]
    status, body = await org.post(f"/bookings/{bid}/cancel", {"from_session_id": sessions[2]["session_id"]})
    assert status == 200, body
    assert [s["status"] for s in body["sessions"]] == ["scheduled", "scheduled", "cancelled", "cancelled"]
    assert body["status"] == "active"
    (event,) = await org.events("booking.cancelled")
    assert event["scope"] == "following"
    assert event["cancelled_session_ids"] == [sessions[2]["session_id"], sessions[3]["session_id"]]
    # from the first one on: nothing is left, so the booking is cancelled too
    status, body = await org.post(f"/bookings/{bid}/cancel", {"from_session_id": sessions[0]["session_id"]})
    assert status == 200 and body["status"] == "cancelled"
    assert {s["status"] for s in body["sessions"]} == {"cancelled"}
    assert org.recorded.changes[-1].kind == "cancelled"


async def test_bad_requests_change_nothing(org: Org) -> None:
    booking = await org.book(SERIES_START, rrule=WEEKLY_4)
    bid, first = booking["booking_id"], booking["sessions"][0]["session_id"]
    foreign = (await org.book("2031-03-18T10:00:00Z", students=("s2",)))["sessions"][0]["session_id"]
    status, body = await org.post(f"/bookings/{bid}/occurrences/{first}/move", {"start": "2031-03-17T10:03:00Z"})
    assert status == 422 and body["errors"][0]["pointer"] == "/start", body
    status, body = await org.post(
        f"/bookings/{bid}/occurrences/{first}/move", {"start": "2031-03-17T12:00:00Z", "scope": "all"}
    )
    assert status == 422 and body["errors"][0]["pointer"] == "/scope", body
    status, body = await org.post(f"/bookings/{bid}/occurrences/{foreign}/skip")
    assert status == 404 and foreign in body["detail"], body
    status, body = await org.post(f"/bookings/{bid}/cancel", {"from_session_id": foreign})
    assert status == 404, body
    await org.store.update_session(first, status=SessionStatus.LIVE)
    status, body = await org.post(f"/bookings/{bid}/occurrences/{first}/skip")
    assert status == 409 and "live" in body["detail"], body
    status, body = await org.post(f"/bookings/{bid}/occurrences/{first}/move", {"start": "2031-03-17T12:00:00Z"})
    assert status == 409, body
    reader = await org.key("bookings:read")
    status, body = await org.post(f"/bookings/{bid}/occurrences/{first}/skip", token=reader)
    assert status == 403 and "bookings:write" in body["detail"]
    status, after = await org.get(f"/bookings/{bid}")
    assert [(s["start"], s["status"]) for s in after["sessions"][1:]] == [
        (s["start"], s["status"]) for s in booking["sessions"][1:]
    ]
    assert await org.events("booking.cancelled") == [] and await org.events("booking.rescheduled") == []
