"""Prometheus metrics of the media data plane.

Module-level objects named ``classmesh_media_*``. Labels are bounded (``node``, ``kind``); room and
participant ids never become labels. The hot path never looks a label up per packet: objects bind
their children once through :func:`bind`.

A forwarding worker behind a front (``media.front``) hands these to its front as text (:func:`exposition`); the
front re-exports them on its own ``/metrics`` with a ``worker`` label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

ROOMS = Gauge("classmesh_media_rooms", "Rooms open on this node.", ["node"])
PARTICIPANTS = Gauge("classmesh_media_participants", "Participants joined on this node.", ["node"])
PUBLISHED_TRACKS = Gauge("classmesh_media_published_tracks", "Tracks published to this node.", ["node", "kind"])
FORWARDED_TRACKS = Gauge(
    "classmesh_media_forwarded_tracks", "Track outputs (one per subscriber and track).", ["node", "kind"]
)
FORWARDED_PACKETS = Counter(
    "classmesh_media_forwarded_packets_total", "RTP packets forwarded to subscribers.", ["node", "kind"]
)
FORWARDED_BYTES = Counter(
    "classmesh_media_forwarded_bytes_total",
    "RTP bytes (before SRTP) forwarded to subscribers.",
    ["node", "kind"],
)
RECEIVED_PACKETS = Counter(
    "classmesh_media_received_packets_total", "RTP packets received from publishers.", ["node", "kind"]
)
NACKS_RECEIVED = Counter(
    "classmesh_media_nacks_received_total", "Lost packets reported by subscribers in NACKs.", ["node"]
)
NACKS_SERVED = Counter(
    "classmesh_media_nacks_served_total", "NACKed packets retransmitted from the packet cache.", ["node"]
)
NACKS_FORWARDED = Counter(
    "classmesh_media_nacks_forwarded_total",
    "NACKed packets requested from the publisher (cache miss).",
    ["node"],
)
PLIS_SENT = Counter("classmesh_media_plis_sent_total", "Keyframe requests sent to publishers.", ["node"])
KEYFRAME_REPLAYS = Counter(
    "classmesh_media_keyframe_replays_total",
    "Video outputs started from the cached latest keyframe instead of waiting for a new one.",
    ["node"],
)
KEYFRAME_RESPONSE = Histogram(
    "classmesh_media_keyframe_response_seconds",
    "From a keyframe request (PLI) to a publisher to the first packet of its next keyframe: what a new subscriber"
    " waits for when no cached keyframe is fresh enough to replay.",
    ["node"],
    buckets=(0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
VIDEO_PAUSES = Counter(
    "classmesh_media_video_pauses_total", "Video outputs paused for lack of subscriber bandwidth.", ["node"]
)
FORWARD_REJECTED = Counter(
    "classmesh_media_forward_rejected_total", "Track outputs refused by the node's stream limit.", ["node"]
)
SUBSCRIBER_LOSS = Histogram(
    "classmesh_media_subscriber_loss_ratio",
    "Fraction lost reported by subscribers' receiver reports.",
    ["node"],
    buckets=(0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SUBSCRIBER_RTT = Histogram(
    "classmesh_media_subscriber_rtt_seconds",
    "Round-trip time computed from subscribers' receiver reports.",
    ["node"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
)


@dataclass(frozen=True, slots=True)
class KindMetrics:
    """Children bound once per (node, kind)."""

    published_tracks: Gauge
    forwarded_tracks: Gauge
    forwarded_packets: Counter
    forwarded_bytes: Counter
    received_packets: Counter


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    """Children bound once per node; pass this object down instead of looking labels up."""

    rooms: Gauge
    participants: Gauge
    nacks_received: Counter
    nacks_served: Counter
    nacks_forwarded: Counter
    plis_sent: Counter
    keyframe_replays: Counter
    keyframe_response: Histogram
    video_pauses: Counter
    forward_rejected: Counter
    loss: Histogram
    rtt: Histogram
    audio: KindMetrics
    video: KindMetrics

    def kind(self, kind: str) -> KindMetrics:
        return self.audio if kind == "audio" else self.video


_BOUND: dict[str, NodeMetrics] = {}


def _kind(node: str, kind: str) -> KindMetrics:
    return KindMetrics(
        published_tracks=PUBLISHED_TRACKS.labels(node, kind),
        forwarded_tracks=FORWARDED_TRACKS.labels(node, kind),
        forwarded_packets=FORWARDED_PACKETS.labels(node, kind),
        forwarded_bytes=FORWARDED_BYTES.labels(node, kind),
        received_packets=RECEIVED_PACKETS.labels(node, kind),
    )


def bind(node: str) -> NodeMetrics:
    """Return the metric children of ``node`` (created once, then cached)."""
    bound = _BOUND.get(node)
    if bound is None:
        bound = NodeMetrics(
            rooms=ROOMS.labels(node),
            participants=PARTICIPANTS.labels(node),
            nacks_received=NACKS_RECEIVED.labels(node),
            nacks_served=NACKS_SERVED.labels(node),
            nacks_forwarded=NACKS_FORWARDED.labels(node),
            plis_sent=PLIS_SENT.labels(node),
            keyframe_replays=KEYFRAME_REPLAYS.labels(node),
            keyframe_response=KEYFRAME_RESPONSE.labels(node),
            video_pauses=VIDEO_PAUSES.labels(node),
            forward_rejected=FORWARD_REJECTED.labels(node),
            loss=SUBSCRIBER_LOSS.labels(node),
            rtt=SUBSCRIBER_RTT.labels(node),
            audio=_kind(node, "audio"),
            video=_kind(node, "video"),
        )
        _BOUND[node] = bound
    return bound


_DATA_PLANE = (
    ROOMS,
    PARTICIPANTS,
    PUBLISHED_TRACKS,
    FORWARDED_TRACKS,
    FORWARDED_PACKETS,
    FORWARDED_BYTES,
    RECEIVED_PACKETS,
    NACKS_RECEIVED,
    NACKS_SERVED,
    NACKS_FORWARDED,
    PLIS_SENT,
    KEYFRAME_REPLAYS,
    KEYFRAME_RESPONSE,
    VIDEO_PAUSES,
    FORWARD_REJECTED,
    SUBSCRIBER_LOSS,
    SUBSCRIBER_RTT,
)


class _DataPlaneCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        for metric in _DATA_PLANE:
            yield from metric.collect()


_EXPORT = CollectorRegistry(auto_describe=False)
_EXPORT.register(_DataPlaneCollector())


def exposition() -> str:
    """This process's data-plane metrics (the ``classmesh_media_*`` above) in the Prometheus text format."""
    return generate_latest(_EXPORT).decode()
