"""Time-zone arithmetic in integer minutes, DST included.

:class:`ZoneClock` answers "what is the UTC offset at this instant" from cached offset segments
(stretches of UTC time with one offset), and turns weekly local windows into UTC intervals.

Semantics of a local window ``[09:00, 17:00)`` on a DST day: it covers exactly the instants whose
local wall time falls inside it. On a spring-forward day a window edge inside the gap therefore
starts (or ends) at the transition itself; on a fall-back day a window over the repeated hour
covers both passes of that hour.
"""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidInputError
from .model import WeeklyWindow

MINUTES_PER_DAY = 1440
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WEEK_ORIGIN = -3 * MINUTES_PER_DAY
"""1970-01-01 was a Thursday: UTC weeks (Monday 00:00) start at this minute offset."""


def utc_week(minute: int) -> int:
    return (minute - _WEEK_ORIGIN) // MINUTES_PER_WEEK


def week_start(week: int) -> int:
    return week * MINUTES_PER_WEEK + _WEEK_ORIGIN


def to_datetime(minute: int) -> datetime:
    return _EPOCH + timedelta(minutes=minute)


def parse_hhmm(text: str) -> int:
    try:
        hours, minutes = text.split(":")
        value = int(hours) * 60 + int(minutes)
    except ValueError as exc:
        raise InvalidInputError(f"bad time of day {text!r} (expected HH:MM)") from exc
    if not 0 <= value <= MINUTES_PER_DAY or not 0 <= int(minutes) < 60:
        raise InvalidInputError(f"time of day {text!r} out of range 00:00..24:00")
    return value


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInputError(f"unknown time zone {name!r}") from exc


class ZoneClock:
    """Offsets of one IANA zone, computed lazily per UTC week and cached."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tz = zone(name)
        self._weeks: dict[int, tuple[list[int], list[int]]] = {}
        self._memo = (-(1 << 62), 0)
        """The last (minute, offset) asked: one request asks many instructors about one instant."""

    def _offset_slow(self, minute: int) -> int:
        delta = to_datetime(minute).astimezone(self._tz).utcoffset()
        assert delta is not None
        return int(delta.total_seconds()) // 60

    def _segments(self, week: int) -> tuple[list[int], list[int]]:
        """Segment starts (UTC minutes) and their offsets for one UTC week."""
        cached = self._weeks.get(week)
        if cached is not None:
            return cached
        start = week_start(week)
        starts = [start]
        offsets = [self._offset_slow(start)]
        step = 60
        for probe in range(start + step, start + MINUTES_PER_WEEK + 1, step):
            current = self._offset_slow(probe) if probe < start + MINUTES_PER_WEEK else None
            if current is None or current == offsets[-1]:
                continue
            lo, hi = probe - step, probe  # offset changes somewhere in (lo, hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._offset_slow(mid) == offsets[-1]:
                    lo = mid
                else:
                    hi = mid
            starts.append(hi)
            offsets.append(current)
        self._weeks[week] = (starts, offsets)
        return starts, offsets

    def offset(self, minute: int) -> int:
        """UTC offset in minutes at a UTC instant."""
        memo = self._memo
        if memo[0] == minute:
            return memo[1]
        starts, offsets = self._segments(utc_week(minute))
        value = offsets[bisect.bisect_right(starts, minute) - 1]
        self._memo = (minute, value)
        return value

    def local(self, minute: int) -> int:
        """Local wall-clock minutes since 1970-01-01 00:00 local."""
        return minute + self.offset(minute)

    def local_day(self, minute: int) -> int:
        """Local calendar day number (days since 1970-01-01) of a UTC instant."""
        return self.local(minute) // MINUTES_PER_DAY

    def day_week(self, minute: int) -> tuple[int, int]:
        """Local day and local ISO week counters of a UTC instant, in one offset lookup."""
        local = minute + self.offset(minute)
        return local // MINUTES_PER_DAY, (local - _WEEK_ORIGIN) // MINUTES_PER_WEEK

    def iso_week(self, minute: int) -> int:
        """Local ISO week number as a plain counter (Monday start), comparable between instants."""
        return (self.local(minute) - _WEEK_ORIGIN) // MINUTES_PER_WEEK

    def utc_of_local(self, local_minute: int) -> int:
        """The first UTC instant whose local wall time is at or after ``local_minute``.

        For an ordinary wall time that is its only instant; for a repeated (fall-back) wall time it is
        the first pass; for a wall time inside a spring-forward gap it is the transition itself.
        """
        candidates = {
            self.offset(local_minute - 1500),
            self.offset(local_minute),
            self.offset(local_minute + 1500),
        }
        exact = [local_minute - off for off in candidates if self.local(local_minute - off) == local_minute]
        if exact:
            return min(exact)
        lo, hi = local_minute - max(candidates), local_minute - min(candidates)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.local(mid) >= local_minute:
                hi = mid
            else:
                lo = mid
        return hi

    def windows_in_week(self, windows: dict[int, list[tuple[int, int]]], week: int) -> list[tuple[int, int]]:
        """UTC intervals of one UTC week covered by weekly local windows (weekday -> [(start, end)])."""
        starts, offsets = self._segments(week)
        week_end = week_start(week) + MINUTES_PER_WEEK
        out: list[tuple[int, int]] = []
        for i, seg_start in enumerate(starts):
            seg_end = starts[i + 1] if i + 1 < len(starts) else week_end
            off = offsets[i]
            local_lo, local_hi = seg_start + off, seg_end + off
            for day in range(local_lo // MINUTES_PER_DAY, (local_hi - 1) // MINUTES_PER_DAY + 1):
                weekday = (day + 3) % 7
                base = day * MINUTES_PER_DAY
                for w_start, w_end in windows.get(weekday, ()):
                    lo = max(base + w_start, local_lo)
                    hi = min(base + w_end, local_hi)
                    if lo < hi:
                        out.append((lo - off, hi - off))
        return merge(out)


def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge overlapping or touching intervals."""
    intervals.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in intervals:
        if merged and lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def compile_windows(
    windows: tuple[WeeklyWindow, ...] | list[WeeklyWindow],
) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for raw in windows:
        window = WeeklyWindow(*raw)
        if not 0 <= window.weekday <= 6:
            raise InvalidInputError(f"weekday {window.weekday} out of range 0..6")
        lo, hi = parse_hhmm(window.start), parse_hhmm(window.end)
        if hi <= lo:
            raise InvalidInputError(f"window {window.start}-{window.end} ends before it starts")
        out.setdefault(window.weekday, []).append((lo, hi))
    return {k: merge(v) for k, v in out.items()}
