"""Expansion of recurring bookings (RFC 5545 RRULE via python-dateutil).

A series keeps its wall-clock time in an anchor time zone (by default the first student's), so a
class at 16:00 stays at 16:00 for the student across DST changes; the UTC instants move instead.
"""

from __future__ import annotations

import re
from datetime import datetime

from dateutil.rrule import rrule, rrulestr

from .clock import MINUTES_PER_DAY, ZoneClock, to_datetime, zone
from .errors import InvalidInputError
from .model import Booking, Occurrence
from .occupancy import epoch_minutes

_LOCAL_EPOCH = datetime(1970, 1, 1)
MAX_OCCURRENCES = 1000
_UTC_UNTIL = re.compile(r"UNTIL=\d{8}T\d{6}Z", re.IGNORECASE)


def local_minutes(naive: datetime) -> int:
    delta = naive - _LOCAL_EPOCH
    return delta.days * MINUTES_PER_DAY + delta.seconds // 60


def expand(booking: Booking, anchor: ZoneClock, horizon_days: int) -> list[Occurrence]:
    """Occurrences of a booking, starting at index 0; a booking without rrule has one occurrence.

    Open-ended rules stop at ``horizon_days`` after the first start (and at most 1000 occurrences).
    """
    start = epoch_minutes(booking.start)
    duration = booking.duration_minutes
    if booking.rrule is None:
        return [Occurrence(0, booking.start, to_datetime(start + duration))]
    local_start = anchor.local(start)
    dtstart = to_datetime(local_start).replace(tzinfo=None)
    if _UTC_UNTIL.search(booking.rrule):
        # dateutil wants an aware DTSTART when UNTIL is in UTC; the wall clock stays the same.
        dtstart = dtstart.replace(tzinfo=zone(anchor.name))
    try:
        rule = rrulestr(booking.rrule, dtstart=dtstart, forceset=False)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"bad RRULE {booking.rrule!r}: {exc}") from exc
    if not isinstance(rule, rrule):
        raise InvalidInputError("only a single RRULE is supported (no RDATE/EXDATE sets)")
    horizon = local_start + horizon_days * MINUTES_PER_DAY
    occurrences: list[Occurrence] = []
    try:
        for moment in rule:
            local = local_minutes(moment.replace(tzinfo=None))
            if local > horizon or len(occurrences) >= MAX_OCCURRENCES:
                break
            utc = anchor.utc_of_local(local)
            occurrences.append(Occurrence(len(occurrences), to_datetime(utc), to_datetime(utc + duration)))
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"bad RRULE {booking.rrule!r}: {exc}") from exc
    return occurrences


def shift_local(anchor: ZoneClock, start: int, old_first: int, new_first: int) -> int:
    """Move ``start`` by the wall-clock difference between ``old_first`` and ``new_first``."""
    delta = anchor.local(new_first) - anchor.local(old_first)
    return anchor.utc_of_local(anchor.local(start) + delta)
