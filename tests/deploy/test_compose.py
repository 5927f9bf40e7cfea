"""deploy/compose.yaml: its classmesh commands are real CLI invocations, its ports, healthchecks, scrape targets,
regions file, secrets and mounts agree with each other. No Docker engine is needed: the file is parsed and
interpolated the way ``docker compose`` does, and the commands are checked against the real CLI."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from core.regions import load_regions
from tests.deploy.support import (
    DEPLOY,
    IMAGE_REPOSITORY,
    PROMETHEUS,
    REPO,
    SERVICE_PORTS,
    InterpolationError,
    classmesh_command,
    command_help,
    flags_in,
    interpolate,
    load_yaml,
    option_value,
    parse_duration_s,
    project_version,
    run_cli,
)

COMPOSE_FILE = DEPLOY / "compose.yaml"
# What deploy/.env (written by make-secrets.sh) provides; everything else keeps the file's defaults.
DOTENV = {"CLASSMESH_DB_PASSWORD": "test-only-password"}
EXPECTED_SERVICES = {
    "redis",
    "postgres",
    "orchestrator",
    "signaling-eu-central",
    "signaling-us-east",
    "media-eu-central",
    "media-us-east",
    "recorder-1",
    "recorder-2",
    "prometheus",
    "grafana",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = load_yaml(COMPOSE_FILE)
    result: dict[str, Any] = interpolate(raw, DOTENV)
    return result


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


@pytest.fixture(scope="module")
def classmesh_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {n: s for n, s in services.items() if str(s.get("image", "")).startswith(IMAGE_REPOSITORY + ":")}
    assert found, "no service runs the classmesh image"
    return found


def _subcommand(service: dict[str, Any]) -> str:
    return str(service["command"][0])


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping"
    return {str(k): str(v) for k, v in env.items()}


def _listen_port(name: str, service: dict[str, Any]) -> int:
    """The port a classmesh service listens on: --port, else CLASSMESH_PORT, else the image's default."""
    flag = option_value(service["command"], "--port")
    if flag is not None:
        return int(flag)
    env = _env(service)
    assert "CLASSMESH_PORT" in env, f"{name}: set CLASSMESH_PORT (the image's HEALTHCHECK probes it)"
    return int(env["CLASSMESH_PORT"])


def _published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host part, container part, protocol) of each short-syntax port mapping."""
    out = []
    for spec in service.get("ports", []):
        text = str(spec)
        proto = "tcp"
        if "/" in text:
            text, proto = text.rsplit("/", 1)
        host, container = text.rsplit(":", 1)
        out.append((host, container, proto))
    return out


def test_compose_runs_every_part_of_the_system(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED_SERVICES


def test_every_classmesh_service_runs_the_one_image_of_this_version(
    classmesh_services: dict[str, dict[str, Any]],
) -> None:
    images = {s["image"] for s in classmesh_services.values()}
    assert images == {f"{IMAGE_REPOSITORY}:{project_version()}"}
    for name, service in classmesh_services.items():
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == REPO, f"{name}: build context must be the repository root"
        assert (context / service["build"]["dockerfile"]).is_file()
        assert _subcommand(service) in SERVICE_PORTS, f"{name}: {service['command'][0]!r} is not a service"


def test_compose_refuses_to_start_without_the_database_password() -> None:
    with pytest.raises(InterpolationError, match="make-secrets"):
        interpolate(load_yaml(COMPOSE_FILE), {})


def test_every_command_is_a_cli_subcommand_and_every_flag_and_variable_is_accepted(
    classmesh_services: dict[str, dict[str, Any]],
) -> None:
    if classmesh_command() is None:
        pytest.skip("the classmesh CLI is not installed yet (neither the console script nor python -m classmesh)")
    for name, service in classmesh_services.items():
        command = [str(a) for a in service["command"]]
        help_ = command_help(command[0])
        unknown_flags = set(flags_in(command[1:])) - help_.flags
        assert not unknown_flags, f"{name}: classmesh {command[0]} does not accept {sorted(unknown_flags)}"
        env = _env(service)
        unknown_env = {k for k in env if k.startswith("CLASSMESH_")} - help_.env
        assert not unknown_env, f"{name}: classmesh {command[0]} does not read {sorted(unknown_env)}"
        # The real parser takes the flags and the environment (types, ranges, choices); --help comes last, so
        # everything before it has been parsed and converted when it exits.
        done = run_cli([*command, "--help"], env)
        assert done.returncode == 0, f"{name}: classmesh refused {command}:\n{done.stderr}"


def test_the_cli_check_catches_a_bad_value(classmesh_services: dict[str, dict[str, Any]]) -> None:
    """The check above is only worth something if the CLI refuses bad input before --help."""
    if classmesh_command() is None:
        pytest.skip("the classmesh CLI is not installed yet")
    media = classmesh_services["media-eu-central"]
    done = run_cli(["media", "--udp-ports", "40999-40000", "--help"], _env(media))
    assert done.returncode != 0
    done = run_cli(["media", "--help"], {**_env(media), "CLASSMESH_WORKERS": "many"})
    assert done.returncode != 0


def test_every_service_with_a_port_has_a_healthcheck(
    services: dict[str, dict[str, Any]], classmesh_services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        if not (service.get("ports") or service.get("expose") or name in classmesh_services):
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test must be CMD or CMD-SHELL"
    for name, service in classmesh_services.items():
        test = " ".join(service["healthcheck"]["test"])
        assert "/healthz" in test and "CLASSMESH_PORT" in test, f"{name}: healthcheck must probe /healthz"
        assert "curl" not in test and "wget" not in test, f"{name}: the image has neither curl nor wget"
        assert _listen_port(name, service) == int(_env(service)["CLASSMESH_PORT"])


def test_published_http_ports_point_at_the_port_the_service_listens_on(
    classmesh_services: dict[str, dict[str, Any]],
) -> None:
    host_ports: list[str] = []
    for name, service in classmesh_services.items():
        port = _listen_port(name, service)
        for host, container, proto in _published(service):
            host_ports.append(f"{host.rsplit(':', 1)[-1]}/{proto}")
            if proto == "tcp":
                assert int(container) == port, f"{name}: publishes {container}, listens on {port}"
                assert host.startswith("${") or host.count(":") == 1, f"{name}: bind HTTP to an address"
    assert len(host_ports) == len(set(host_ports)), f"two services publish the same host port: {host_ports}"


def test_media_nodes_publish_their_udp_range_one_to_one_and_announce_an_address(
    classmesh_services: dict[str, dict[str, Any]],
) -> None:
    media = {n: s for n, s in classmesh_services.items() if _subcommand(s) == "media"}
    assert len(media) == 2
    ranges: list[tuple[int, int]] = []
    for name, service in media.items():
        udp = option_value(service["command"], "--udp-ports") or _env(service).get("CLASSMESH_UDP_PORTS")
        assert udp, f"{name}: no --udp-ports"
        published = [(h, c) for h, c, proto in _published(service) if proto == "udp"]
        assert published == [(udp, udp)], f"{name}: publish {udp}:{udp}/udp so candidates carry host ports"
        lo, hi = (int(p) for p in udp.split("-"))
        assert 1024 <= lo <= hi <= 65535
        ranges.append((lo, hi))
        assert _env(service).get("CLASSMESH_ICE_ADDRESSES"), f"{name}: CLASSMESH_ICE_ADDRESSES must be set"
    ranges.sort()
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), f"UDP ranges overlap: {ranges}"


def test_regions_file_lists_each_media_node_at_its_compose_address(
    classmesh_services: dict[str, dict[str, Any]],
) -> None:
    regions = load_regions(DEPLOY / "regions.compose.yaml")
    listed = {node.node_id: (region.name, node.url) for region in regions for node in region.nodes}
    media = {n: s for n, s in classmesh_services.items() if _subcommand(s) == "media"}
    running = {
        option_value(s["command"], "--node-id"): (
            option_value(s["command"], "--region"),
            f"http://{n}:{_listen_port(n, s)}",
        )
        for n, s in media.items()
    }
    assert listed == running
    for service in media.values():
        assert (
            option_value(service["command"], "--public-url")
            == running[option_value(service["command"], "--node-id")][1]
        )
    signaling_regions = sorted(
        str(option_value(s["command"], "--region"))
        for s in classmesh_services.values()
        if _subcommand(s) == "signaling"
    )
    assert signaling_regions == sorted(r.name for r in regions), "one signaling service per region"
    for service in classmesh_services.values():
        mounts = [str(v) for v in service.get("volumes", [])]
        assert "./regions.compose.yaml:/etc/classmesh/regions.yaml:ro" in mounts


def _volume_at(service: dict[str, Any], path: str) -> str | None:
    """The named volume (or bind source) a service mounts at ``path``, None when nothing is mounted there."""
    for spec in service.get("volumes", []):
        parts = str(spec).split(":")
        if len(parts) >= 2 and parts[1] == path:
            return parts[0]
    return None


def test_two_recorders_with_their_own_ids_share_one_recordings_volume_with_the_orchestrator(
    compose: dict[str, Any], classmesh_services: dict[str, dict[str, Any]]
) -> None:
    recorders = {n: s for n, s in classmesh_services.items() if _subcommand(s) == "recorder"}
    assert len(recorders) == 2
    ids = {option_value(s["command"], "--worker-id") for s in recorders.values()}
    assert ids == set(recorders), "worker id = service name, so logs, metrics and leases line up"
    orchestrator = classmesh_services["orchestrator"]
    # Where each one reads and writes recordings, from its command (the CLI's flags) ...
    directories = {n: option_value(s["command"], "--storage") for n, s in recorders.items()}
    directories["orchestrator"] = option_value(orchestrator["command"], "--recordings")
    assert all(directories.values()), (
        f"set --storage on every recorder and --recordings on the orchestrator: {directories}"
    )
    # ... and what is mounted there: the same named volume everywhere, so the leader sees every copy.
    mounted = {n: _volume_at(classmesh_services[n], d) for n, d in directories.items() if d}
    assert set(mounted.values()) == {"recordings"}, f"recordings must be one shared volume: {mounted}"
    assert "recordings" in compose["volumes"]
    assert not any(str(v).startswith("recordings-") for v in compose["volumes"]), "per-recorder volumes are gone"


def test_every_scrape_target_is_a_compose_service_on_its_port(
    services: dict[str, dict[str, Any]], classmesh_services: dict[str, dict[str, Any]]
) -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    scraped: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                if job["job_name"] == "prometheus":
                    assert target == "localhost:9090"
                    continue
                assert host in services, f"job {job['job_name']}: {host} is not a compose service"
                assert host in classmesh_services, f"job {job['job_name']}: {host} is not a classmesh service"
                assert int(port) == _listen_port(host, services[host]), f"{target}: wrong port"
                assert job["job_name"] == _subcommand(services[host]), f"{target} is in job {job['job_name']}"
                assert host not in scraped, f"{host} is scraped twice"
                scraped[host] = job["job_name"]
                assert job.get("metrics_path", "/metrics") == "/metrics"
    assert set(scraped) == set(classmesh_services), "every classmesh service is scraped"


def test_every_rule_file_prometheus_loads_exists_and_parses(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"], "no rule files"
    for name in config["rule_files"]:
        path = PROMETHEUS / name
        assert path.is_file(), f"{name} is referenced but missing"
        groups = load_yaml(path)["groups"]
        assert groups and all(g["rules"] for g in groups)
        for group in groups:
            for rule in group["rules"]:
                assert rule.get("alert") and rule.get("expr"), f"{path.name}: incomplete rule {rule}"
    mounts = [str(v) for v in services["prometheus"]["volumes"]]
    assert "./prometheus:/etc/prometheus:ro" in mounts, "rule paths are relative to the mounted config dir"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_bind_mounts_and_secret_files_point_at_deploy_files(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret} is not declared"
    for secret in compose["secrets"].values():
        path = Path(secret["file"])
        assert path.parts[:2] == (".", "secrets") or path.parts[0] == "secrets", "secrets live in deploy/secrets"
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert "/secrets/" in ignored and "/.env" in ignored, "generated secrets must never be committed"


def test_only_the_orchestrator_holds_the_signing_key(classmesh_services: dict[str, dict[str, Any]]) -> None:
    holders = {n for n, s in classmesh_services.items() if "token_private_key" in s.get("secrets", [])}
    assert holders == {"orchestrator"}
    for name, service in classmesh_services.items():
        if _subcommand(service) in ("signaling", "media"):
            assert "token_public_key" in service.get("secrets", []), f"{name} verifies tokens"


def test_stop_grace_period_covers_the_drain(classmesh_services: dict[str, dict[str, Any]]) -> None:
    for name, service in classmesh_services.items():
        drain = float(_env(service)["CLASSMESH_DRAIN_TIMEOUT"])
        grace = parse_duration_s(service["stop_grace_period"])
        assert grace >= drain + 10, f"{name}: stop_grace_period {grace}s < drain {drain}s + 10s margin"


def test_dependencies_exist_and_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dep, condition in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert condition["condition"] == "service_healthy"
            assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"


def test_http_ports_default_to_loopback_and_udp_to_every_interface(compose: dict[str, Any]) -> None:
    raw = COMPOSE_FILE.read_text()
    published_tcp = re.findall(r'- "([^"]+:\d+)"\n', raw)
    assert published_tcp and all(p.startswith("${CLASSMESH_BIND:-127.0.0.1}:") for p in published_tcp)
    for service in compose["services"].values():
        for spec in service.get("ports", []):
            if str(spec).endswith("/udp"):
                assert str(spec).count(":") == 1, "UDP ranges must be reachable by browsers"


# Keys of the compose specification this project may use; a misspelt key (``stop_grace_periods``) is silently
# ignored by some compose versions, so it is caught here.
TOP_LEVEL_KEYS = {"name", "services", "volumes", "secrets", "networks", "configs"}
SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes",
    "secrets", "configs", "depends_on", "healthcheck", "restart", "init", "read_only", "tmpfs", "cap_add",
    "cap_drop", "security_opt", "stop_grace_period", "stop_signal", "user", "working_dir", "networks",
    "network_mode", "labels", "logging", "deploy", "ulimits", "profiles", "pull_policy", "hostname",
    "extra_hosts", "container_name", "shm_size", "sysctls",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}


def test_only_compose_specification_keys_are_used(compose: dict[str, Any]) -> None:
    assert {k for k in compose if not k.startswith("x-")} <= TOP_LEVEL_KEYS
    for name, service in compose["services"].items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {sorted(set(service) - SERVICE_KEYS)}"
        assert set(service.get("healthcheck", {})) <= HEALTHCHECK_KEYS, f"{name}: unknown healthcheck keys"
        assert set(service.get("build", {})) <= {"context", "dockerfile", "args", "target"}
        for key in ("interval", "timeout", "start_period", "stop_grace_period"):
            value = service.get("healthcheck", {}).get(key) if key != "stop_grace_period" else service.get(key)
            if value is not None:
                parse_duration_s(value)
