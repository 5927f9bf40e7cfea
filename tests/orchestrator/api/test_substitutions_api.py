"""Instructor leave and cancellations: ranked substitutes under the organisation's policy, proposals, confirm.

Real HTTP, real store (SQLite and PostgreSQL), the real scheduling engine; the independent checker verifies
the schedules that come out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest

from orchestrator.store import Store
from orchestrator.store.models import ExceptionStatus
from tests.orchestrator.api.conftest import ApiFactory
from tests.orchestrator.api.scheduling_helpers import WEEKDAYS, Org, make_org
from tests.orchestrator.test_provisioning import events as webhook_events

MONDAY = "2031-07-07T10:00:00Z"  # 12:00 in Berlin


@pytest.fixture
async def org(make_api: ApiFactory, store: Store) -> Org:
    return await make_org(make_api, store)


async def _policy(org: Org, policy: str) -> None:
    status, body = await org.call("PATCH", "/settings", {"substitution_policy": policy})
    assert status == 200 and body["substitution_policy"] == policy, body


async def _join_link(org: Org, session_id: str, participant: str, role: str) -> str:
    status, body = await org.post(f"/sessions/{session_id}/join-links", {"participant_id": participant, "role": role})
    assert status == 201, body
    return str(jwt.decode(body["token"], options={"verify_signature": False})["jti"])


async def _session(org: Org, session_id: str) -> dict[str, Any]:
    status, body = await org.get(f"/sessions/{session_id}")
    assert status == 200, body
    return body


async def test_settings_start_with_propose_and_only_an_admin_changes_them(org: Org) -> None:
    status, body = await org.get("/settings")
    assert status == 200 and body == {"substitution_policy": "propose", "substitute_candidates": 5, "updated_at": None}
    status, body = await org.call(
        "PATCH", "/settings", {"substitution_policy": "auto_assign", "substitute_candidates": 3}
    )
    assert status == 200 and body["substitution_policy"] == "auto_assign" and body["substitute_candidates"] == 3
    assert body["updated_at"] is not None
    for bad, pointer in (
        ({"substitute_candidates": 0}, "/substitute_candidates"),
        ({"substitution_policy": "ask_the_dean"}, "/substitution_policy"),
        ({"colour": "blue"}, "/colour"),
    ):
        status, problem = await org.call("PATCH", "/settings", bad)
        assert status == 422 and problem["errors"][0]["pointer"] == pointer, problem
    reader = await org.key("scheduling:read", "scheduling:write")
    status, problem = await org.call("PATCH", "/settings", {"substitution_policy": "propose"}, token=reader)
    assert status == 403 and "admin" in problem["detail"]
    status, body = await org.get("/settings", token=reader)
    assert status == 200 and body["substitution_policy"] == "auto_assign" and body["substitute_candidates"] == 3


async def test_a_cancelling_instructor_gets_ranked_substitutes_and_who_taught_the_student_comes_first(org: Org) -> None:
    await org.book("2031-06-02T10:00:00Z", instructor="ben")  # ben has taught s1 before
    session_id = (await org.book(MONDAY))["sessions"][0]["session_id"]
    status, sub = await org.post(f"/sessions/{session_id}/instructor-cancel", {"reason": "ill"})
    assert status == 201, sub
    assert sub["status"] == "proposed" and sub["policy"] == "propose" and sub["trigger"] == "instructor_cancel"
    assert sub["previous_instructor_id"] == "ana" and sub["reason"] == "ill" and sub["instructor_id"] is None
    ranked = [c["instructor_id"] for c in sub["candidates"]]
    assert ranked == ["ben", "dee"]  # cy teaches maths only up to level 3; s1 is at level 4
    assert sub["candidates"][0]["tier"] == 0 and sub["candidates"][1]["tier"] == 2
    continuity = {r["factor"]: r for r in sub["candidates"][0]["reasons"]}["continuity"]
    assert continuity["detail"].startswith("1 sessions with these students")
    # a proposal changes nothing yet
    assert (await _session(org, session_id))["instructor_id"] == "ana"
    assert await org.events("session.instructor_changed") == []
    status, listed = await org.get("/substitutions?status=proposed")
    assert status == 200 and [s["substitution_id"] for s in listed["items"]] == [sub["substitution_id"]]
    status, problem = await org.post(f"/sessions/{session_id}/instructor-cancel")
    assert status == 409 and "open substitution" in problem["detail"], problem


async def test_confirming_gives_the_session_to_the_substitute_and_revokes_the_old_join_links(org: Org) -> None:
    session_id = (await org.book(MONDAY))["sessions"][0]["session_id"]
    ana_link = await _join_link(org, session_id, "ana", "instructor")
    student_link = await _join_link(org, session_id, "s1", "student")
    _, sub = await org.post(f"/sessions/{session_id}/instructor-cancel")
    status, done = await org.post(f"/substitutions/{sub['substitution_id']}/confirm", {"reason": "ok by phone"})
    assert status == 200, done
    assert done["status"] == "confirmed" and done["instructor_id"] == sub["candidates"][0]["instructor_id"]
    substitute = done["instructor_id"]
    assert (await _session(org, session_id))["instructor_id"] == substitute
    (event,) = await org.events("session.instructor_changed")
    assert event["previous_instructor_id"] == "ana" and event["instructor_id"] == substitute
    assert event["substitution_id"] == sub["substitution_id"] and event["revoked_join_links"] == 1
    old = await org.store.get_join_link(ana_link)
    assert old is not None and old.revoked_at is not None
    kept = await org.store.get_join_link(student_link)
    assert kept is not None and kept.revoked_at is None
    assert [link.jti for link in org.recorded.revoked] == [ana_link]
    assert org.recorded.changes[-1].kind == "updated"
    # the old instructor cannot mint a new instructor link; the substitute can
    status, _ = await org.post(f"/sessions/{session_id}/join-links", {"participant_id": "ana", "role": "instructor"})
    assert status == 422
    await _join_link(org, session_id, substitute, "instructor")
    # the substitute holds the slot in the database; ana's slot is free
    occupied = await org.occupancy_of(session_id)
    assert {p for kind, p, _ in occupied if kind == "instructor"} == {substitute}
    await org.book(MONDAY, instructor="ana", students=("s2",))
    status, problem = await org.post(f"/substitutions/{sub['substitution_id']}/confirm")
    assert status == 409 and "confirmed" in problem["detail"]
    assert await org.findings() == []


async def test_confirm_after_the_candidate_became_busy_fails_with_the_rule(org: Org) -> None:
    session_id = (await org.book(MONDAY))["sessions"][0]["session_id"]
    _, sub = await org.post(f"/sessions/{session_id}/instructor-cancel")
    first = sub["candidates"][0]["instructor_id"]
    held = (await org.book("2031-07-07T10:30:00Z", instructor=first, students=("s2",)))["sessions"][0]["session_id"]
    status, problem = await org.post(f"/substitutions/{sub['substitution_id']}/confirm")
    assert status == 409, problem
    assert problem["code"] == "instructor_double_booked" and problem["conflicting_session_id"] == held
    status, still = await org.get(f"/substitutions/{sub['substitution_id']}")
    assert still["status"] == "proposed"
    assert (await _session(org, session_id))["instructor_id"] == "ana"
    assert await org.events("session.instructor_changed") == []
    # another candidate still can
    second = sub["candidates"][1]["instructor_id"]
    status, done = await org.post(f"/substitutions/{sub['substitution_id']}/confirm", {"instructor_id": second})
    assert status == 200 and done["instructor_id"] == second


async def test_two_confirms_competing_for_one_slot_one_wins(org: Org) -> None:
    first = (await org.book("2031-07-08T10:00:00Z"))["sessions"][0]["session_id"]
    second = (await org.book("2031-07-08T10:00:00Z", instructor="dee", students=("s2",)))["sessions"][0]["session_id"]
    _, a = await org.post(f"/sessions/{first}/instructor-cancel")
    _, b = await org.post(f"/sessions/{second}/instructor-cancel")
    assert a["candidates"][0]["instructor_id"] == "ben" and "ben" in [c["instructor_id"] for c in b["candidates"]]
    results = await asyncio.gather(
        org.post(f"/substitutions/{a['substitution_id']}/confirm", {"instructor_id": "ben"}),
        org.post(f"/substitutions/{b['substitution_id']}/confirm", {"instructor_id": "ben"}),
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409], results
    loser = next(body for status, body in results if status == 409)
    assert loser["code"] in ("instructor_double_booked", "buffer_violated"), loser
    teachers = [(await _session(org, sid))["instructor_id"] for sid in (first, second)]
    assert teachers.count("ben") == 1
    assert len(await org.events("session.instructor_changed")) == 1
    assert await org.findings() == []


async def test_auto_assign_gives_the_session_to_the_best_substitute_at_once(org: Org) -> None:
    await _policy(org, "auto_assign")
    await org.book("2031-06-02T10:00:00Z", instructor="dee")  # dee has taught s1 before
    session_id = (await org.book(MONDAY))["sessions"][0]["session_id"]
    ana_link = await _join_link(org, session_id, "ana", "instructor")
    status, sub = await org.post(f"/sessions/{session_id}/instructor-cancel")
    assert status == 201, sub
    assert sub["status"] == "assigned" and sub["instructor_id"] == "dee" and sub["decided_at"] is not None
    assert (await _session(org, session_id))["instructor_id"] == "dee"
    (event,) = await org.events("session.instructor_changed")
    assert event["instructor_id"] == "dee" and event["reason"] == "instructor_cancel"
    link = await org.store.get_join_link(ana_link)
    assert link is not None and link.revoked_at is not None
    status, problem = await org.post(f"/substitutions/{sub['substitution_id']}/decline")
    assert status == 409, problem


@pytest.fixture
async def capped(make_api: ApiFactory, store: Store) -> Org:
    """ana, plus two substitutes whose weekly caps (3 and 2) only together cover five sessions a week."""
    math5 = [{"subject_id": "math", "max_level": 5}]
    return await make_org(
        make_api,
        store,
        instructors=[
            {"instructor_id": "ana", "qualifications": math5},
            {"instructor_id": "ben", "qualifications": math5, "max_sessions_per_week": 3},
            {"instructor_id": "dee", "qualifications": math5, "max_sessions_per_week": 2},
        ],
    )


async def test_a_leave_over_twenty_sessions_covers_them_all_within_every_rule(capped: Org) -> None:
    org = capped
    await _policy(org, "auto_assign")
    booking = await org.book("2031-09-01T10:00:00Z", rrule="FREQ=DAILY;COUNT=20;BYDAY=MO,TU,WE,TH,FR")
    ids = [s["session_id"] for s in booking["sessions"]]
    assert len(ids) == 20
    leave = {"start": "2031-08-31T00:00:00Z", "end": "2031-09-27T00:00:00Z", "reason": "parental leave"}
    status, body = await org.call("PATCH", "/instructors/ana", {"exceptions": [leave]})
    assert status == 200 and body["exceptions"][0]["reason"] == "parental leave", body
    status, listed = await org.get("/substitutions?limit=50")
    assert status == 200
    subs = listed["items"]
    assert sorted(s["session_id"] for s in subs) == sorted(ids)
    assert {s["status"] for s in subs} == {"assigned"} and {s["trigger"] for s in subs} == {"leave"}
    assert {s["reason"] for s in subs} == {"parental leave"}
    sessions = (await org.store.list_sessions(booking_id=booking["booking_id"], limit=50)).items
    teachers = [s.instructor_id for s in sessions]
    assert teachers.count("ben") == 12 and teachers.count("dee") == 8  # 3 + 2 a week, for four weeks
    assert await org.findings() == []
    assert len(await org.events("session.instructor_changed")) == 20


async def test_nobody_feasible_raises_an_exception_and_lists_the_nearest_alternatives(org: Org) -> None:
    saturday = [*WEEKDAYS, {"weekday": 5, "start": "08:00", "end": "20:00"}]
    status, body = await org.call("PATCH", "/instructors/ana", {"weekly_availability": saturday})
    assert status == 200, body
    session_id = (await org.book("2031-07-12T10:00:00Z"))["sessions"][0]["session_id"]  # a Saturday
    status, sub = await org.post(f"/sessions/{session_id}/instructor-cancel")
    assert status == 201, sub
    assert sub["status"] == "proposed" and sub["candidates"] == [] and sub["exception_id"]
    assert sub["alternatives"], sub
    # other times (the same instructor, but never in the slot she cancelled) and other instructors on other days
    alternatives = {(a["start"], a["instructor_id"]) for a in sub["alternatives"]}
    assert ("2031-07-11T10:00:00Z", "ben") in alternatives, alternatives
    assert all(not (i == "ana" and "2031-07-12T09:05" < s < "2031-07-12T11:00") for s, i in alternatives)
    assert all(i != "ana" or s != "2031-07-12T10:00:00Z" for s, i in alternatives)
    exceptions = (await org.store.list_exceptions()).items
    (raised,) = [e for e in exceptions if e.kind == "no_substitute"]
    assert raised.exception_id == sub["exception_id"] and raised.subject_refs["session_id"] == session_id
    status, problem = await org.post(f"/substitutions/{sub['substitution_id']}/confirm")
    assert status == 422 and problem["errors"][0]["pointer"] == "/instructor_id", problem
    status, problem = await org.post(f"/substitutions/{sub['substitution_id']}/confirm", {"instructor_id": "ben"})
    assert status == 422 and problem["code"] == "outside_availability", problem
    # once someone can take it (ben now works Saturdays), confirming resolves the exception
    status, _ = await org.call("PATCH", "/instructors/ben", {"weekly_availability": saturday})
    status, done = await org.post(f"/substitutions/{sub['substitution_id']}/confirm", {"instructor_id": "ben"})
    assert status == 200 and done["status"] == "confirmed", done
    resolved = {e.exception_id: e for e in (await org.store.list_exceptions()).items}[sub["exception_id"]]
    assert resolved.status is ExceptionStatus.RESOLVED
    sent = [e["exception"]["status"] for e in await webhook_events(org.store, "exception.resolved")]
    assert sent == ["resolved"]  # the helpdesk hears of it too


async def test_decline_closes_the_proposal_and_bad_requests_change_nothing(org: Org) -> None:
    session_id = (await org.book(MONDAY))["sessions"][0]["session_id"]
    _, sub = await org.post(f"/sessions/{session_id}/instructor-cancel")
    sid = sub["substitution_id"]
    writer = await org.key("scheduling:read")
    status, problem = await org.post(f"/substitutions/{sid}/decline", token=writer)
    assert status == 403 and "scheduling:write" in problem["detail"]
    for body, pointer in (({"instructor_id": "not an id!"}, "/instructor_id"), ({"who": "ben"}, "/who")):
        status, problem = await org.post(f"/substitutions/{sid}/confirm", body)
        assert status == 422 and problem["errors"][0]["pointer"] == pointer, problem
    status, problem = await org.post(f"/substitutions/{sid}/confirm", {"instructor_id": "ana"})
    assert status == 422 and "replaced" in problem["errors"][0]["detail"], problem
    status, problem = await org.post(f"/substitutions/{sid}/confirm", {"instructor_id": "nobody"})
    assert status == 422 and problem["errors"][0]["pointer"] == "/instructor_id", problem
    status, problem = await org.post(f"/substitutions/{sid}/confirm", {"instructor_id": "cy"})
    assert status == 422 and problem["code"] == "not_qualified", problem
    status, still = await org.get(f"/substitutions/{sid}")
    assert still["status"] == "proposed" and (await _session(org, session_id))["instructor_id"] == "ana"
    status, declined = await org.post(f"/substitutions/{sid}/decline", {"reason": "we cancel the class instead"})
    assert status == 200 and declined["status"] == "declined" and declined["decision_reason"].startswith("we cancel")
    status, problem = await org.post(f"/substitutions/{sid}/confirm")
    assert status == 409, problem
    status, problem = await org.get("/substitutions?status=maybe")
    assert status == 400, problem
    status, problem = await org.post("/sessions/ses_nope/instructor-cancel")
    assert status == 404, problem
    status, problem = await org.get("/substitutions/sbs_nope")
    assert status == 404, problem
    # a declined proposal lets a new one be made
    status, again = await org.post(f"/sessions/{session_id}/instructor-cancel")
    assert status == 201 and again["substitution_id"] != sid
    assert await org.events("session.instructor_changed") == []
