"""deploy/make-secrets.sh: writes every file compose mounts, with keys core/tokens.py can sign and verify with,
and never replaces what already exists."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from core.tokens import TokenError, TokenIssuer, TokenVerifier
from tests.deploy.support import DEPLOY, load_yaml

SCRIPT = DEPLOY / "make-secrets.sh"


def _make(into: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return subprocess.run(["sh", str(SCRIPT), str(into)], capture_output=True, text=True, timeout=60)


def test_writes_every_secret_file_compose_mounts(tmp_path: Path) -> None:
    done = _make(tmp_path)
    assert done.returncode == 0, done.stderr
    compose = load_yaml(DEPLOY / "compose.yaml")
    for secret in compose["secrets"].values():
        path = tmp_path / secret["file"]
        assert path.is_file() and path.stat().st_size > 0, f"{secret['file']} was not written"
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    assert len(env["CLASSMESH_DB_PASSWORD"]) >= 32
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_keys_sign_and_verify_join_tokens(tmp_path: Path) -> None:
    assert _make(tmp_path).returncode == 0
    issuer = TokenIssuer.from_file(tmp_path / "secrets" / "token_private_key.pem")
    verifier = TokenVerifier.from_file(tmp_path / "secrets" / "token_public_key.pem")
    token = issuer.mint(room="room_1", identity="u1", name="Ada", role="student")
    grant = verifier.verify(token, room="room_1")
    assert (grant.room, grant.identity, grant.role.value) == ("room_1", "u1", "student")
    other = tmp_path / "other"
    assert _make(other).returncode == 0
    with pytest.raises(TokenError, match="signature"):
        TokenVerifier.from_file(other / "secrets" / "token_public_key.pem").verify(token, room="room_1")


def test_running_again_keeps_existing_secrets(tmp_path: Path) -> None:
    assert _make(tmp_path).returncode == 0
    files = [tmp_path / ".env", *sorted((tmp_path / "secrets").iterdir())]
    before = {p: p.read_bytes() for p in files}
    done = _make(tmp_path)
    assert done.returncode == 0 and "created" not in done.stdout
    assert {p: p.read_bytes() for p in files} == before


def test_script_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)
