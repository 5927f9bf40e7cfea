"""Builders of the single-service commands: how `classmesh media --workers` turns into processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from classmesh.services import media_workers

CLASSMESH = str(Path(sys.executable).with_name("classmesh"))
REDIS = "redis://127.0.0.1:6379/0"


def test_zero_workers_means_one_per_core() -> None:
    assert media_workers(0, REDIS, cpus=8) == 8
    assert media_workers(3, REDIS, cpus=8) == 3


def test_the_in_process_bus_keeps_a_node_in_one_process() -> None:
    assert media_workers(0, "memory://", cpus=8) == 1
    assert media_workers(4, "memory://", cpus=8) == 1


def test_negative_workers_are_refused() -> None:
    with pytest.raises(ValueError, match="--workers"):
        media_workers(-1, REDIS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "-2"], "--workers must be 0"),
        (["--workers", "2", "--udp-ports", "40000-40000"], "too few for 2 workers"),
    ],
)
def test_media_refuses_impossible_worker_settings_before_starting(args: list[str], message: str) -> None:
    # port 9 (discard) never runs redis: the command must fail on its flags before it connects anywhere
    argv = [CLASSMESH, "media", "--region", "eu-central", "--bus", "redis://127.0.0.1:9/0", "--port", "0", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
