"""The default hooks: RRULE expansion (bounded subset) and join-link minting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from orchestrator.api.hooks import default_mint_join_link, default_validate_and_assign, expand
from orchestrator.errors import InvalidInputError, RuleViolation
from orchestrator.store.models import (
    BookingDraft,
    BookingId,
    InstructorId,
    Session,
    SessionId,
    SessionStatus,
    StudentId,
    SubjectId,
)

MON = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)


def draft(rrule: str | None, instructor: str | None = "ins_a") -> BookingDraft:
    return BookingDraft(
        SubjectId("math"),
        (StudentId("stu_1"),),
        MON,
        45,
        InstructorId(instructor) if instructor else None,
        rrule,
    )


def test_expand_weekly_with_byday_and_until() -> None:
    starts = expand(draft("FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20300313T235959Z"))
    assert starts == [MON, MON + timedelta(days=2), MON + timedelta(days=7), MON + timedelta(days=9)]


def test_expand_daily_interval_count_and_prefix() -> None:
    starts = expand(draft("RRULE:FREQ=DAILY;INTERVAL=2;COUNT=3"))
    assert starts == [MON, MON + timedelta(days=2), MON + timedelta(days=4)]


def test_no_rrule_is_one_occurrence() -> None:
    assert expand(draft(None)) == [MON]


@pytest.mark.parametrize(
    ("rrule", "why"),
    [
        ("FREQ=SECONDLY;COUNT=3", "FREQ must be DAILY or WEEKLY"),
        ("FREQ=WEEKLY", "exactly one of COUNT and UNTIL"),
        ("FREQ=WEEKLY;COUNT=3;UNTIL=20300601T000000Z", "exactly one of COUNT and UNTIL"),
        ("FREQ=WEEKLY;COUNT=201", "COUNT must be between 1 and 200"),
        ("FREQ=WEEKLY;UNTIL=20300601", "UNTIL must be a UTC date-time"),
        ("FREQ=WEEKLY;UNTIL=20350601T000000Z", "within"),
        ("FREQ=DAILY;COUNT=3;BYMONTH=2", "BYMONTH is not supported"),
        ("FREQ=WEEKLY;BYDAY=1MO;COUNT=2", "BYDAY must list weekday codes"),
        ("FREQ=WEEKLY;COUNT=2;COUNT=3", "given twice"),
        ("garbage", "is not NAME=VALUE"),
    ],
)
def test_unsupported_or_unbounded_rules_are_refused_with_a_reason(rrule: str, why: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        expand(draft(rrule))
    assert why in err.value.errors[0].detail
    assert err.value.errors[0].pointer == "/rrule"


async def test_default_assignment_needs_an_instructor() -> None:
    occurrences = await default_validate_and_assign(draft("FREQ=WEEKLY;COUNT=2"))
    assert [(o.occurrence_index, o.end - o.start, o.instructor_id) for o in occurrences] == [
        (0, timedelta(minutes=45), "ins_a"),
        (1, timedelta(minutes=45), "ins_a"),
    ]
    with pytest.raises(RuleViolation) as err:
        await default_validate_and_assign(draft(None, instructor=None))
    assert err.value.code == "instructor_required" and err.value.status == 422


async def test_default_join_link_expires_after_the_session() -> None:
    session = Session(
        SessionId("ses_1"), BookingId("bkg_1"), 0, MON, MON + timedelta(hours=1), InstructorId("ins_a"),
        (StudentId("stu_1"),), SubjectId("math"), SessionStatus.SCHEDULED, None, None, None, False, None,
    )  # fmt: skip
    url, token, expires = await default_mint_join_link(session, "stu_1", "student")
    assert url.endswith(token) and expires > session.end
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "stu_1" and claims["sid"] == "ses_1" and claims["exp"] == int(expires.timestamp())
