"""Turns the packet logs of publishers and subscribers into the benchmark's figures.

A packet sent by publisher ``p`` at ``t`` (within the measuring window) counts as delivered to a
subscriber of ``p`` when that subscriber received a packet with the same payload, first-hand or as a
retransmission, no earlier than ``t`` and at most :data:`MATCH_WINDOW` seconds later. Forwarding
delay is measured on first-hand deliveries only, from the publisher's send call to the moment the
subscriber's ICE socket protocol got the datagram (before aiortc's queues, DTLS/SRTP and our handler:
that part of the generator's own lag is reported apart as ``generator_stack_lag_ms``). For targets
that re-encode (mediarelay) payloads do not survive the SFU: only frames are counted there (marker
bits per subscriber versus frames sent) and the delay is not measured.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .taps import DROPPED, MARKER, RTX, VIDEO, PacketLog

MATCH_WINDOW = 2.0
TRANSCODING_TARGETS = frozenset({"mediarelay"})


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class _Sent:
    times: list[float]
    hashes: list[int]
    markers: list[bool]


def _sent(log: PacketLog, t0: float, t1: float, video: bool) -> _Sent:
    out = _Sent([], [], [])
    want = VIDEO if video else 0
    for t, h, f in zip(log.times, log.hashes, log.flags, strict=True):
        if t0 <= t <= t1 and not f & RTX and (f & VIDEO) == want:
            out.times.append(t)
            out.hashes.append(h)
            out.markers.append(bool(f & MARKER))
    return out


def _receptions(log: PacketLog, video: bool) -> dict[int, list[tuple[float, bool]]]:
    out: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    want = VIDEO if video else 0
    for t, h, f in zip(log.times, log.hashes, log.flags, strict=True):
        if not f & DROPPED and (f & VIDEO) == want:
            out[h].append((t, bool(f & RTX)))
    return out


def _match(sent: _Sent, received: dict[int, list[tuple[float, bool]]]) -> tuple[int, int, list[float]]:
    """(packets delivered, frames delivered, first-hand delays in seconds)."""
    delivered = frames = 0
    delays: list[float] = []
    for t, h, marker in zip(sent.times, sent.hashes, sent.markers, strict=True):
        best: tuple[float, bool] | None = None
        for rt, rtx in received.get(h, ()):
            if t - 0.0005 <= rt <= t + MATCH_WINDOW and (best is None or rt < best[0]):
                best = (rt, rtx)
        if best is None:
            continue
        delivered += 1
        frames += marker
        if not best[1]:
            delays.append(max(0.0, best[0] - t))
    return delivered, frames, delays


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "mean": None}
    return {"min": round(min(values), 5), "mean": round(sum(values) / len(values), 5)}


def summarize(
    target: str,
    publishers: list[dict[str, Any]],
    subscribers: list[dict[str, Any]],
    t0: float,
    t1: float,
    audio: bool,
) -> dict[str, Any]:
    """Delivery, delay, NACK and loss figures of one target run."""
    transcoding = target in TRANSCODING_TARGETS
    by_room = {p["room"]: p["log"] for p in publishers}
    sent_video = {room: _sent(log, t0, t1, True) for room, log in by_room.items()}
    sent_audio = {room: _sent(log, t0, t1, False) for room, log in by_room.items()} if audio else {}
    video_delivery: list[float] = []
    audio_delivery: list[float] = []
    frame_delivery: list[float] = []
    delays: list[float] = []
    frames_sent = frames_delivered = 0
    dropped = recovered = retransmissions = 0
    nack_messages = nacked_packets = 0
    lags: list[float] = []
    for sub in subscribers:
        lags.extend(sub.get("stack_lags", ()))
        log: PacketLog = sub["log"]
        sv = sent_video.get(sub["room"])
        if sv is None:
            continue
        nack_messages += sub["nack_messages"]
        nacked_packets += sub["nacked_packets"]
        sent_frames = sum(sv.markers)
        frames_sent += sent_frames
        if transcoding:
            got = sum(
                1
                for t, f in zip(log.times, log.flags, strict=True)
                if t0 <= t <= t1 and f & VIDEO and f & MARKER and not f & (RTX | DROPPED)
            )
            frames_delivered += got
            frame_delivery.append(min(1.0, got / sent_frames) if sent_frames else 0.0)
        else:
            received = _receptions(log, True)
            n, frames, d = _match(sv, received)
            video_delivery.append(n / len(sv.times) if sv.times else 0.0)
            frame_delivery.append(frames / sent_frames if sent_frames else 0.0)
            frames_delivered += frames
            delays.extend(d)
            if audio:
                sa = sent_audio[sub["room"]]
                na, _, _ = _match(sa, _receptions(log, False))
                audio_delivery.append(na / len(sa.times) if sa.times else 0.0)
        # injected loss and its recovery (video; aiortc has no audio NACK)
        lost: dict[int, float] = {}
        rtx_ok: dict[int, list[float]] = defaultdict(list)
        for t, h, f in zip(log.times, log.hashes, log.flags, strict=True):
            if not f & VIDEO:
                continue
            if f & RTX and not f & DROPPED:
                rtx_ok[h].append(t)
                if t0 <= t <= t1 + MATCH_WINDOW:
                    retransmissions += 1
            elif f & DROPPED and not f & RTX and t0 <= t <= t1:
                lost.setdefault(h, t)
        dropped += len(lost)
        recovered += sum(1 for h, t in lost.items() if any(t <= rt <= t + MATCH_WINDOW for rt in rtx_ok.get(h, ())))
    delays.sort()
    lags.sort()
    return {
        "delivery": {
            "video_packets": None if transcoding else _stats(video_delivery),
            "audio_packets": _stats(audio_delivery) if audio and not transcoding else None,
            "video_frames": {**_stats(frame_delivery), "sent": frames_sent, "delivered": frames_delivered},
            "subscribers_below_99_9": None if transcoding else sum(1 for v in video_delivery if v < 0.999),
        },
        "delay_ms": None
        if transcoding
        else {
            "p50": _ms(percentile(delays, 50)),
            "p99": _ms(percentile(delays, 99)),
            "max": _ms(delays[-1] if delays else None),
            "samples": len(delays),
        },
        "generator_stack_lag_ms": {
            "p50": _ms(percentile(lags, 50)),
            "p99": _ms(percentile(lags, 99)),
            "samples": len(lags),
        },
        "nack_messages": nack_messages,
        "nacked_packets": nacked_packets,
        "retransmissions": retransmissions,
        "loss": {
            "dropped": dropped,
            "recovered": recovered,
            "recovered_fraction": round(recovered / dropped, 4) if dropped else None,
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)
