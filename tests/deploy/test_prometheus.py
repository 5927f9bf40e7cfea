"""deploy/prometheus/: the config and rules load in Prometheus' own checker, the alert rules behave as their unit
tests (rules.test.yml) say, and those unit tests catch a broken rule. Metric names follow
classmesh_<service>_<thing>. promtool comes from Debian's `prometheus` package; without it the promtool checks
skip and the structural ones still run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.support import CLASSMESH_METRIC, CLASSMESH_METRIC_NAME, PROMETHEUS, load_yaml

REQUIRED_ALERTS = {
    "ClassmeshServiceDown",
    "ClassmeshNodeHeartbeatMissing",
    "ClassmeshRecordingGap",
    "ClassmeshWebhookOutboxLag",
}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict[str, object]]:
    return [rule for group in load_yaml(PROMETHEUS / "rules.yml")["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    done = _run([_promtool(), "check", "config", "prometheus.yml"], PROMETHEUS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    done = _run([_promtool(), "test", "rules", "rules.test.yml"], PROMETHEUS)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("> 15", "> 1500"),  # heartbeat threshold: a dead node would never alert
        ('job=~"orchestrator|signaling|media|recorder"', 'job=~"orchestrator"'),  # down media unnoticed
        ("increase(classmesh_recorder_gaps_total[5m]) > 0", "increase(classmesh_recorder_gaps_total[5m]) > 5"),
        ("webhook_outbox_lag_seconds) > 300", "webhook_outbox_lag_seconds) > 3000"),
    ],
    ids=["heartbeat", "service-down", "recording-gap", "outbox-lag"],
)
def test_rule_unit_tests_fail_when_a_rule_is_broken(tmp_path: Path, original: str, broken: str) -> None:
    promtool = _promtool()
    rules = (PROMETHEUS / "rules.yml").read_text()
    assert original in rules
    (tmp_path / "rules.yml").write_text(rules.replace(original, broken, 1))
    shutil.copy(PROMETHEUS / "rules.test.yml", tmp_path / "rules.test.yml")
    done = _run([promtool, "test", "rules", "rules.test.yml"], tmp_path)
    assert done.returncode != 0, "the unit tests did not notice the broken rule"


def test_every_required_alert_exists_with_severity_and_summary() -> None:
    rules = _rules()
    names = {str(r["alert"]) for r in rules}
    assert REQUIRED_ALERTS <= names
    for rule in rules:
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict) and labels["severity"] in ("critical", "warning")
        assert isinstance(annotations, dict) and annotations["summary"] and annotations["description"]


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in load_yaml(PROMETHEUS / "rules.test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert {str(r["alert"]) for r in _rules()} == tested


def test_metric_names_follow_the_convention() -> None:
    text = (PROMETHEUS / "rules.yml").read_text()
    names = set(CLASSMESH_METRIC.findall(text))
    assert names, "rules use no classmesh metric"
    for name in names:
        assert CLASSMESH_METRIC_NAME.match(name), f"{name} is not classmesh_<service>_<thing>"
        if name.endswith("_bucket"):
            assert re.search(r"_(seconds|bytes)_bucket$", name), f"{name}: a histogram carries its unit"
