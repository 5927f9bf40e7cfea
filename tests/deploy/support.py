"""Helpers shared by the deployment tests: file locations, compose-style interpolation, and the real
``classmesh`` CLI (its ``--help`` output is the contract the deployment files are checked against)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

# The service subcommands a deployment may run, and each one's default HTTP port.
SERVICE_PORTS = {"orchestrator": 8700, "signaling": 8701, "media": 8710, "recorder": 8720}
IMAGE_REPOSITORY = "classmesh/classmesh"

# Standard metrics that are not classmesh's own (exported by Prometheus itself or prometheus_client).
STANDARD_METRICS = {"up", "process_cpu_seconds_total", "process_resident_memory_bytes"}
CLASSMESH_METRIC = re.compile(r"\bclassmesh_[a-z0-9_]+\b")
CLASSMESH_METRIC_NAME = re.compile(r"^classmesh_(orchestrator|signaling|media|recorder)_[a-z0-9]+(_[a-z0-9]+)*$")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def project_version() -> str:
    import tomllib

    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def parse_duration_s(text: str | int | float) -> float:
    """Compose/Prometheus durations: '45s', '5m', '1m30s', '320s' (or a bare number of seconds)."""
    if isinstance(text, int | float):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


# ---------------------------------------------------------------------------------------------------------
# Compose variable interpolation (the subset of the compose specification the files use).

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A required variable (``${NAME:?message}``) is missing."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Substitute ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
    ``${VAR?err}`` and ``$$`` in every string of ``value``, the way ``docker compose`` does."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: _substitute(m, env), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    if match.group("escaped"):
        return "$"
    name = match.group("braced") or match.group("bare")
    op, arg = match.group("op"), match.group("arg") or ""
    present = name in env
    set_and_not_empty = present and env[name] != ""
    if op == ":-":
        return env[name] if set_and_not_empty else arg
    if op == "-":
        return env[name] if present else arg
    if op == ":?":
        if not set_and_not_empty:
            raise InterpolationError(f"{name}: {arg}")
        return env[name]
    if op == "?":
        if not present:
            raise InterpolationError(f"{name}: {arg}")
        return env[name]
    return env.get(name, "")


# ---------------------------------------------------------------------------------------------------------
# The classmesh CLI.


@dataclass(frozen=True, slots=True)
class CommandHelp:
    """What ``classmesh <sub> --help`` says the subcommand accepts."""

    flags: frozenset[str]
    env: frozenset[str]
    text: str


_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_ENV = re.compile(r"\[env\s+(CLASSMESH_[A-Z0-9_]+)\]")


@functools.cache
def classmesh_command() -> tuple[str, ...] | None:
    """How to run the CLI: the ``classmesh`` console script of this venv or PATH, else ``python -m classmesh``
    from the repository (the same parser); None when neither answers ``--help``."""
    candidates: list[tuple[str, ...]] = []
    beside = Path(sys.executable).with_name("classmesh")
    if beside.exists():
        candidates.append((str(beside),))
    on_path = shutil.which("classmesh")
    if on_path:
        candidates.append((on_path,))
    candidates.append((sys.executable, "-m", "classmesh"))
    for command in candidates:
        try:
            done = subprocess.run(
                [*command, "--help"], cwd=REPO, env=clean_env({}), capture_output=True, text=True, timeout=60
            )
        except OSError:
            continue
        if done.returncode == 0:
            return command
    return None


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """An environment with no CLASSMESH_* variable from the test run itself, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSMESH_")}
    env.update(extra)
    env["COLUMNS"] = "100"
    return env


def run_cli(args: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = classmesh_command()
    assert command is not None
    return subprocess.run(
        [*command, *args], cwd=REPO, env=clean_env(env or {}), capture_output=True, text=True, timeout=60
    )


@functools.cache
def command_help(subcommand: str) -> CommandHelp:
    done = run_cli([subcommand, "--help"])
    assert done.returncode == 0, f"classmesh {subcommand} --help failed:\n{done.stderr}"
    return CommandHelp(
        flags=frozenset(_FLAG.findall(done.stdout)), env=frozenset(_ENV.findall(done.stdout)), text=done.stdout
    )


def flags_in(args: Sequence[str]) -> list[str]:
    """The long options in an argument list (``--flag value`` and ``--flag=value``)."""
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def option_value(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
