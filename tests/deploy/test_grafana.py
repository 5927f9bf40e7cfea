"""deploy/grafana/: the provisioned datasource points at the compose Prometheus, the dashboard provider at the
mounted dashboards, and the dashboard shows what operators need (rooms, participants, forwarded packets, CPU,
NACK/PLI, recordings, API latency) with queries Prometheus can parse."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import CLASSMESH_METRIC, CLASSMESH_METRIC_NAME, DEPLOY, GRAFANA, load_yaml

DASHBOARD = GRAFANA / "dashboards" / "classmesh.json"
# The metric each required topic is drawn from.
REQUIRED_METRICS = {
    "rooms": "classmesh_media_rooms",
    "participants": "classmesh_media_participants",
    "forwarded packets": "classmesh_media_forwarded_packets_total",
    "CPU": "process_cpu_seconds_total",
    "NACK": "classmesh_media_nacks_received_total",
    "PLI": "classmesh_media_plis_sent_total",
    "recordings": "classmesh_recorder_active_recordings",
    "API latency": "classmesh_orchestrator_api_request_duration_seconds_bucket",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p["targets"]]


def test_datasource_is_the_compose_prometheus() -> None:
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    compose = load_yaml(DEPLOY / "compose.yaml")
    assert "prometheus" in compose["services"]
    assert any(str(p).endswith(":9090:9090") for p in compose["services"]["prometheus"]["ports"])


def test_dashboard_provider_reads_the_mounted_directory() -> None:
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "classmesh.yaml")["providers"]
    mounts = [str(v) for v in load_yaml(DEPLOY / "compose.yaml")["services"]["grafana"]["volumes"]]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_every_panel_queries_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    for panel in _panels(dashboard):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{panel['title']} is wider than the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(("topic", "metric"), sorted(REQUIRED_METRICS.items()))
def test_dashboard_shows_each_required_topic(dashboard: dict[str, Any], topic: str, metric: str) -> None:
    assert any(metric in expr for expr in _exprs(dashboard)), f"no panel shows {topic} ({metric})"


def test_metric_names_follow_the_convention(dashboard: dict[str, Any]) -> None:
    for expr in _exprs(dashboard):
        for name in CLASSMESH_METRIC.findall(expr):
            assert CLASSMESH_METRIC_NAME.match(name), f"{name} is not classmesh_<service>_<thing>"


def test_region_variable_is_defined_where_it_is_used(dashboard: dict[str, Any]) -> None:
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    used = any("$region" in expr for expr in _exprs(dashboard))
    assert used and "region" in variables


def test_every_query_parses_as_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Grafana's variables replaced by what it would send, each query becomes a recording rule for promtool."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = [
        {
            "record": f"classmesh:dashboard_query_{i}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$region", ".*"),
        }
        for i, expr in enumerate(_exprs(dashboard))
    ]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", "queries.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # and the check does catch a broken query
    rules[0]["expr"] = "sum(rate(classmesh_media_rooms[1m]"
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", "queries.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
