"""The `classmesh` command's surface: every subcommand documents its flags and environment variables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from core.tokens import Role, TokenVerifier

CLASSMESH = str(Path(sys.executable).with_name("classmesh"))


@pytest.mark.parametrize("command", ["dev", "orchestrator", "signaling", "media", "recorder", "join-link"])
def test_every_subcommand_has_help_with_env_vars(command: str) -> None:
    result = subprocess.run([CLASSMESH, command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[env CLASSMESH_" in result.stdout


def test_env_var_sets_a_default(tmp_path: Path) -> None:
    env = {"CLASSMESH_TTL": "banana", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [CLASSMESH, "join-link", "--room", "r1", "--name", "A", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2 and "--ttl" in result.stderr


def test_join_link_mints_a_verifiable_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            CLASSMESH,
            "join-link",
            "--room",
            "algebra-7",
            "--name",
            "Ada Lovelace",
            "--role",
            "instructor",
            "--region",
            "eu-central",
            "--ttl",
            "15m",
            "--data-dir",
            str(tmp_path),
            "--signaling-url",
            "http://127.0.0.1:9999",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    url = urlparse(result.stdout.strip())
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:9999", "/room/algebra-7")
    token = parse_qs(url.query)["token"][0]
    grant = TokenVerifier((tmp_path / "keys" / "token-public.pem").read_bytes()).verify(token, room="algebra-7")
    assert grant.role is Role.INSTRUCTOR and grant.name == "Ada Lovelace" and grant.identity == "ada-lovelace"
    assert 14 * 60 < grant.expires_at - __import__("time").time() <= 15 * 60


@pytest.mark.parametrize(
    "args", [["--room", "bad room"], ["--room", "r", "--ttl", "-5m"], ["--room", "r", "--role", "admin"]]
)
def test_join_link_refuses_bad_input(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run(
        [CLASSMESH, "join-link", "--name", "A", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr
