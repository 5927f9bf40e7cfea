"""The data-plane metrics a forwarding worker hands its front, and how the front re-exports them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from media import front_metrics, metrics


def _module_metrics(module: object) -> dict[str, MetricWrapperBase]:
    return {n: v for n, v in vars(module).items() if isinstance(v, MetricWrapperBase)}


def test_every_data_plane_metric_is_exported_to_the_front() -> None:
    exported = {id(m) for m in metrics._DATA_PLANE}
    missing = [name for name, m in _module_metrics(metrics).items() if id(m) not in exported]
    assert not missing, f"add these to media.metrics._DATA_PLANE: {missing}"


def test_front_metrics_never_share_a_name_with_a_worker_family() -> None:
    worker = {f.name for f in text_string_to_metric_families(metrics.exposition())}
    front = {m._name for m in _module_metrics(front_metrics).values()}
    assert worker and front and not worker & front


def test_workers_samples_come_out_once_each_with_a_worker_label() -> None:
    metrics.bind("eu-test").video.forwarded_packets.inc(7)
    text = metrics.exposition()
    collector = front_metrics.WorkerMetrics()
    collector.update(0, text)
    collector.update(1, text.replace(" 7.0", " 5.0"))
    collector.update(2, "this is not the prometheus text format {")
    registry = CollectorRegistry()
    registry.register(collector)
    out = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(out)}  # parses: no duplicate families
    packets = families["classmesh_media_forwarded_packets"]
    values = {
        s.labels["worker"]: s.value
        for s in packets.samples
        if s.name.endswith("_total") and s.labels.get("node") == "eu-test" and s.labels.get("kind") == "video"
    }
    assert values == {"0": 7.0, "1": 5.0}
    assert out.count("# TYPE classmesh_media_forwarded_packets_total counter") == 1
    collector.forget(0)
    collector.forget(1)
    assert "eu-test" not in generate_latest(registry).decode()
