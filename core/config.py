"""Configuration: read once at start-up from CLI flags and environment variables into frozen dataclasses.

Every flag has an environment variable (``--port`` <-> ``CLASSMESH_PORT``); the flag wins. ``add_option`` puts
the variable's name into ``--help``. Nothing below the CLI reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "CLASSMESH_"


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    env: str | None = None,
    default: Any = None,
    type: Callable[[str], Any] = str,
    help: str = "",
    environ: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> None:
    """``parser.add_argument`` whose default comes from an environment variable when it is set."""
    environ = os.environ if environ is None else environ
    env = env or ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
    value = environ.get(env)
    if value is not None and value != "":
        if kwargs.get("action") == "append":
            default = [type(v.strip()) for v in value.split(",") if v.strip()]
        else:
            try:
                default = type(value)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"environment variable {env}={value!r}: {exc}")
    shown = f" (default: {default})" if default not in (None, [], "") else ""
    parser.add_argument(flag, default=default, type=type, help=f"{help}{shown} [env {env}]", **kwargs)


def port_range(text: str) -> tuple[int, int]:
    """'40000-40999' -> (40000, 40999)."""
    try:
        lo_s, hi_s = text.split("-", 1)
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port range like 40000-40999, got {text!r}") from None
    if not 1024 <= lo <= hi <= 65535:
        raise argparse.ArgumentTypeError(f"port range must lie in 1024-65535 with low <= high, got {text!r}")
    return lo, hi


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_list(text: str) -> tuple[float, ...]:
    """'24h,15m' -> (86400.0, 900.0): comma-separated positive durations (s, m, h or d; plain numbers are seconds)."""
    out: list[float] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part[:-1]) * _UNITS[part[-1]] if part[-1] in _UNITS else float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a duration: {part!r} (use e.g. 24h,15m)") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"durations must be positive, got {part!r}")
        out.append(value)
    return tuple(out)


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class CommonConfig:
    """What every service process needs."""

    host: str = "127.0.0.1"
    port: int = 0
    bus_url: str = "memory://"
    regions_file: Path | None = None
    log_format: str = "text"
    log_level: str = "info"
    drain_timeout: float = 30.0
    version: str = "dev"


def add_common_options(parser: argparse.ArgumentParser, *, default_port: int) -> None:
    add_option(parser, "--host", default="127.0.0.1", help="address to listen on")
    add_option(parser, "--port", type=int, default=default_port, help="HTTP port (health, metrics, API)")
    add_option(parser, "--bus", default="memory://", help="bus URL: memory:// or redis://host:6379/0")
    add_option(parser, "--regions-file", type=Path, default=None, help="regions.yaml to load")
    add_option(parser, "--log-format", default="text", choices=["text", "json"], help="log line format")
    add_option(parser, "--log-level", default="info", help="log level")
    add_option(parser, "--drain-timeout", type=positive_float, default=30.0, help="seconds a drain may take")


def common_from_args(args: argparse.Namespace, version: str) -> CommonConfig:
    return CommonConfig(
        host=args.host,
        port=args.port,
        bus_url=args.bus,
        regions_file=args.regions_file,
        log_format=args.log_format,
        log_level=args.log_level,
        drain_timeout=args.drain_timeout,
        version=version,
    )
