"""Placing frames on the media node's wall clock.

``TrackClock`` maps one stream's extended RTP timestamps to wall-clock seconds (Unix time of the
node's clock) using the RTCP sender reports the SFU sends for that stream: an SR says "RTP
timestamp R was sent at NTP time N", so a frame with timestamp T was captured at
``N + (T - R) / clock_rate``. Both recorders of a room receive the same mapping for the same
media, so their frames land on the same instants and their segments can be aligned.

Before the first SR the mapping falls back to the local arrival time of the first frame
(``source == "arrival"``). The recorder holds frames back until ``min_reports`` SRs arrived
(``synced``) or for at most its ``sr_wait``; if no SR came by then, frames are written with the
arrival mapping and, when the first SR arrives, the mapping switches to it and the size of the
jump is kept (``correction``). Each SR is jittered by the SFU's scheduling (about +-10 ms), so
the anchor is the median of what the recent SRs imply. One SR that disagrees with the mapping by
more than ``reanchor_threshold`` is ignored as an outlier; two in a row mean the SFU re-based the
stream (a source switch) and re-anchor it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

NTP_UNIX_OFFSET = 2_208_988_800


def ntp_to_unix(ntp: int) -> float:
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


@dataclass(frozen=True, slots=True)
class ClockAnchor:
    rtp_timestamp: int  # extended
    wall: float
    source: str  # "sr" | "arrival"


class TrackClock:
    def __init__(
        self, clock_rate: int, *, reanchor_threshold: float = 0.05, min_reports: int = 3, history: int = 15
    ) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self.reanchor_threshold = reanchor_threshold
        self.min_reports = min_reports
        self._anchor: ClockAnchor | None = None
        self._implied: list[float] = []  # anchor wall time implied by each SR since the last re-anchor
        self._history = history
        self._last_ts: int | None = None
        self.drift = 0.0  # last SR minus the running mapping, seconds
        self.correction = 0.0  # jump applied when the first SR replaced the arrival mapping
        self.reports = 0
        self._outliers = 0

    @property
    def source(self) -> str | None:
        return self._anchor.source if self._anchor else None

    @property
    def synced(self) -> bool:
        """Enough SRs for a stable mapping (the recorder holds frames back until then)."""
        return self._anchor is not None and self._anchor.source == "sr" and len(self._implied) >= self.min_reports

    def _extend(self, rtp_timestamp: int) -> int:
        """Extend a 32-bit SR timestamp next to the last frame timestamp seen."""
        ref = self._last_ts
        if ref is None:
            return rtp_timestamp + (1 << 32)  # same base the depacketizer uses for its first packet
        delta = (rtp_timestamp - ref) % (1 << 32)
        if delta >= 1 << 31:
            delta -= 1 << 32
        return ref + delta

    def observe(self, timestamp: int, arrival: float) -> None:
        """Note a frame's extended timestamp (and anchor on arrival time if nothing better exists)."""
        self._last_ts = timestamp
        if self._anchor is None:
            self._anchor = ClockAnchor(timestamp, arrival, "arrival")

    def sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        """Fold in one SR. The anchor's wall time is the median of what the SRs since the last
        re-anchor imply for it: each SR is off by the SFU's scheduling jitter (about +-10 ms), and
        the median of several makes both copies agree to a few milliseconds."""
        wall = ntp_to_unix(ntp_timestamp)
        ts = self._extend(rtp_timestamp)
        self.reports += 1
        anchor = self._anchor
        if anchor is None or anchor.source == "arrival":
            if anchor is not None:
                predicted = anchor.wall + (ts - anchor.rtp_timestamp) / self.clock_rate
                self.correction = self.drift = wall - predicted
            self._anchor = ClockAnchor(ts, wall, "sr")
            self._implied = [wall]
            return
        predicted = anchor.wall + (ts - anchor.rtp_timestamp) / self.clock_rate
        self.drift = wall - predicted
        if abs(self.drift) > self.reanchor_threshold:
            # one SR off by that much is an outlier (a late SFU loop); two in a row: re-based stream
            self._outliers += 1
            if self._outliers >= 2:
                self._outliers = 0
                self._anchor = ClockAnchor(ts, wall, "sr")
                self._implied = [wall]
            return
        self._outliers = 0
        self._implied.append(wall - (ts - anchor.rtp_timestamp) / self.clock_rate)
        del self._implied[: -self._history]
        self._anchor = ClockAnchor(anchor.rtp_timestamp, statistics.median(self._implied), "sr")

    def wall(self, timestamp: int) -> float:
        if self._anchor is None:
            raise RuntimeError("no clock anchor yet: call observe() first")
        return self._anchor.wall + (timestamp - self._anchor.rtp_timestamp) / self.clock_rate
