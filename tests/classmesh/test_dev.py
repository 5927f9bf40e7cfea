"""`classmesh dev` as a user runs it: a real process, real ports, SIGTERM at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.regions import DEFAULT_REGIONS_FILE
from tests.conftest import free_port

pytestmark = pytest.mark.multiprocess

CLASSMESH = str(Path(sys.executable).with_name("classmesh"))
BAD_SIGNS = (
    "Task was destroyed",
    "Unclosed",
    "ResourceWarning",
    "Traceback",
    "never awaited",
    "setup plugin",  # Alembic's per-migration plugin chatter, kept out of the log
)


def regions_with_free_ports(tmp_path: Path, names: list[str]) -> Path:
    data = yaml.safe_load(DEFAULT_REGIONS_FILE.read_text())
    data["regions"] = {n: data["regions"][n] for n in names}
    for region in data["regions"].values():
        for node in region["nodes"]:
            node["port"] = free_port()
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_dev(tmp_path: Path, *extra: str, regions: list[str] | None = None) -> tuple[subprocess.Popen[str], int]:
    base = free_port()
    while base + 21 > 65535:
        base = free_port()
    regions_file = regions_with_free_ports(tmp_path, regions or ["eu-central", "us-east"])
    env = os.environ | {"PYTHONWARNINGS": "default", "PYTHONDEVMODE": "1"}
    proc = subprocess.Popen(
        [
            CLASSMESH,
            "dev",
            "--data-dir",
            str(tmp_path / "var"),
            "--base-port",
            str(base),
            "--regions-file",
            str(regions_file),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return proc, base


def read_until_ready(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    out = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            out.append(line)
            if "Press Ctrl-C to stop." in line:
                return "".join(out)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.kill()
    raise AssertionError(f"classmesh dev was not ready within {timeout}s:\n{''.join(out)}\n{stderr[-3000:]}")


def get(url: str, key: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def media_nodes(body: str) -> int:
    try:
        return sum(1 for n in json.loads(body)["items"] if n["kind"] == "media" and n["state"] == "serving")
    except (ValueError, KeyError):
        return 0


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> tuple[int, float, str]:
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"classmesh dev did not exit within {timeout}s of SIGTERM") from None
    assert proc.stderr is not None
    return code, time.monotonic() - began, proc.stderr.read()


def test_dev_starts_everything_prints_urls_and_stops_cleanly(tmp_path: Path) -> None:
    began = time.monotonic()
    proc, base = start_dev(tmp_path)
    try:
        out = read_until_ready(proc)
        ready_in = time.monotonic() - began
        health_urls = re.findall(r"(http://\S+/healthz)", out)
        metric_urls = re.findall(r"(http://\S+/metrics)", out)
        # orchestrator, signaling, two media nodes, two recorders
        assert len(health_urls) == 6 and len(metric_urls) == 6, out
        assert re.search(r"classroom .*http://127\.0\.0\.1:\d+/room/demo\?token=\S+", out)
        assert "/dashboard" in out and "/v1/docs" in out
        # the service table's header sits over its columns
        table = [line for line in out.splitlines() if "/healthz" in line or line.lstrip().startswith("service ")]
        header, rows = table[0], table[1:]
        for row in rows:
            assert header.index("health") == row.index("http://"), out
            assert header.index("metrics") == row.rindex("http://"), out
        for url in health_urls:
            status, _ = get(url)
            assert status == 200, url
            status, _ = get(url.replace("/healthz", "/readyz"))
            assert status == 200, url
        for url in metric_urls:
            status, text = get(url)
            assert status == 200
            names = {f.name for f in text_string_to_metric_families(text)}
            assert "classmesh_service_state" in names
        # the orchestrator sees both media nodes through their heartbeats (ops API, with the dev admin key)
        key = (tmp_path / "var" / "dev-api-key").read_text().strip()
        assert key in out
        assert get(f"http://127.0.0.1:{base}/v1/nodes")[0] == 401
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, body = get(f"http://127.0.0.1:{base}/v1/nodes", key)
            if media_nodes(body) == 2:
                break
            time.sleep(0.2)
        assert media_nodes(body) == 2, body
        # a booked demo class with a link per person, in the booking API
        demo = re.findall(r"^ {4}(demo-[a-z0-9-]+): +(http://\S+/room/(ses_\w+)\?token=\S+)$", out, re.MULTILINE)
        assert [d[0] for d in demo] == ["demo-instructor", "demo-student-1", "demo-student-2"], out
        status, body = get(f"http://127.0.0.1:{base}/v1/sessions?instructor_id=demo-instructor", key)
        assert status == 200 and [s["session_id"] for s in json.loads(body)["items"]] == [demo[0][2]]
    finally:
        code, took, stderr = stop(proc)
    assert code == 0, stderr[-3000:]
    assert took < 10
    assert ready_in < 20
    for sign in (*BAD_SIGNS, "level=error"):
        assert sign not in stderr, f"{sign!r} in stderr:\n{stderr[-3000:]}"

    # started again on the same data: the same demo class, not a second booking
    proc, base = start_dev(tmp_path)
    try:
        again = read_until_ready(proc)
        assert demo[0][2] in again
        status, body = get(f"http://127.0.0.1:{base}/v1/sessions?instructor_id=demo-instructor", key)
        assert len(json.loads(body)["items"]) == 1
    finally:
        code, _, stderr = stop(proc)
    assert code == 0, stderr[-3000:]


def test_dev_refuses_unknown_regions(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLASSMESH, "dev", "--regions", "atlantis", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "atlantis" in result.stderr


def test_dev_over_redis(tmp_path: Path, redis_server) -> None:  # type: ignore[no-untyped-def]
    proc, base = start_dev(tmp_path, "--redis", redis_server.url, regions=["eu-central"])
    try:
        out = read_until_ready(proc)
        assert "redis" in out
        deadline = time.monotonic() + 5
        body = ""
        key = (tmp_path / "var" / "dev-api-key").read_text().strip()
        while time.monotonic() < deadline:
            _, body = get(f"http://127.0.0.1:{base}/v1/nodes", key)
            if media_nodes(body) == 1:
                break
            time.sleep(0.2)
        assert media_nodes(body) == 1, body
    finally:
        code, _, stderr = stop(proc)
    assert code == 0, stderr[-3000:]
