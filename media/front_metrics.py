"""Prometheus metrics of a media node's front (``media.front``), and the re-export of its workers' metrics.

Apart from ``media/metrics.py`` on purpose: a front process must not register the data-plane families
(``classmesh_media_rooms``, ``..._forwarded_packets_total``, ...) itself, because it re-exports its workers'
samples of exactly those families, with a ``worker`` label, on its own ``/metrics``; two families of one name in
one exposition would be invalid. Labels stay bounded: ``node``, and ``worker`` (0..N-1).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

WORKERS_READY = Gauge("classmesh_media_front_workers_ready", "Forwarding workers answering their front.", ["node"])
WORKER_ROOMS = Gauge(
    "classmesh_media_front_worker_rooms", "Rooms the front has placed on each worker.", ["node", "worker"]
)
WORKER_FAILURES = Counter(
    "classmesh_media_front_worker_failures_total",
    "Workers that exited without being asked to, or stopped answering and were killed.",
    ["node"],
)
WORKER_RESTARTS = Counter("classmesh_media_front_worker_restarts_total", "Worker processes started again.", ["node"])
ROOMS_RECOVERED = Counter(
    "classmesh_media_front_rooms_recovered_total",
    "Rooms of a failed worker re-created on another worker, their participants re-seated.",
    ["node"],
)
ROOMS_LOST = Counter(
    "classmesh_media_front_rooms_lost_total",
    "Rooms of a failed worker that could not be re-created (closed, and their room key released).",
    ["node"],
)
FORWARD_SECONDS = Histogram(
    "classmesh_media_front_forward_seconds",
    "Time from a request reaching the front to the owning worker's answer.",
    ["node"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


class WorkerMetrics(Collector):
    """The last metrics text each worker sent its front (every poll), exported with a ``worker`` label.

    Register it once per front; ``update`` and ``forget`` are called by the front's poll loop.
    """

    def __init__(self) -> None:
        self._texts: dict[int, str] = {}

    def update(self, worker: int, text: str) -> None:
        self._texts[worker] = text

    def forget(self, worker: int) -> None:
        self._texts.pop(worker, None)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for worker, text in sorted(self._texts.items()):
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError:
                continue  # a truncated or malformed text: skip this worker until its next poll
            for family in families:
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for s in family.samples:
                    labels = {**s.labels, "worker": str(worker)}
                    out.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
        return list(merged.values())
