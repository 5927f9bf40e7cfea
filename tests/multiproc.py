"""Real classmesh processes for multi-process tests: start, wait until ready, signal, collect logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from core.regions import DEFAULT_REGIONS_FILE
from tests.conftest import free_port

CLASSMESH = str(Path(sys.executable).with_name("classmesh"))


def http_json(url: str, key: str | None = None, timeout: float = 3.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


class ServiceProcess:
    """One `classmesh <service>` process with its log in a file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = port
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("a")
        env = os.environ | {"PYTHONWARNINGS": "default"} | (env or {})
        self.process = subprocess.Popen([CLASSMESH, *args], stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            status, _ = http_json(f"{self.url}/readyz")
            if status == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready within {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def write_regions(path: Path, nodes: dict[str, list[str]]) -> dict[str, int]:
    """A regions file with the given node ids per region on free ports; returns node id -> port."""
    base = yaml.safe_load(DEFAULT_REGIONS_FILE.read_text())["regions"]
    ports: dict[str, int] = {}
    regions: dict[str, Any] = {}
    for region, ids in nodes.items():
        body = dict(base[region])
        body["nodes"] = []
        for node_id in ids:
            ports[node_id] = free_port()
            body["nodes"].append({"id": node_id, "port": ports[node_id]})
        regions[region] = body
    path.write_text(yaml.safe_dump({"regions": regions}))
    return ports


class Fleet:
    """An orchestrator, a signaling server and media nodes as separate processes sharing one Redis."""

    def __init__(
        self,
        tmp: Path,
        redis_url: str,
        nodes: dict[str, list[str]],
        *,
        version: str = "1",
        storage: str | None = None,
        recorder_storage: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``storage``: the recordings storage URL (S3) for the orchestrator and the recorders, with ``env`` (its
        credentials) given to both; by default they share the directory ``recordings``. ``recorder_storage``: the
        recorders' URL when it differs (the same store reached another way, e.g. through a ``TcpGate``)."""
        from core.tokens import TokenIssuer, load_or_create_dev_keys

        self.tmp = tmp
        self.redis_url = redis_url
        self.regions_file = tmp / "regions.yaml"
        self.node_ports = write_regions(self.regions_file, nodes)
        self.node_regions = {n: r for r, ids in nodes.items() for n in ids}
        self.private_key, self.public_key = load_or_create_dev_keys(tmp / "keys")
        self.issuer = TokenIssuer.from_file(self.private_key)
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.procs: dict[str, ServiceProcess] = {}
        self.version = version
        self.signaling_port = free_port()
        self.storage = storage
        self.recorder_storage = recorder_storage or storage
        self.env = env or {}

    def common(self, port: int) -> list[str]:
        return [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--bus",
            self.redis_url,
            "--regions-file",
            str(self.regions_file),
            "--drain-timeout",
            "10",
        ]

    def start_orchestrator(self, name: str = "orchestrator", database: str | None = None) -> ServiceProcess:
        port = free_port()
        args = [
            "orchestrator",
            *self.common(port),
            "--data-dir",
            str(self.tmp / "data"),
            "--private-key",
            str(self.private_key),
            "--signaling-url",
            f"http://127.0.0.1:{self.signaling_port}",
        ]
        if database:
            args += ["--database", database]
        if self.storage:
            args += ["--recordings", self.storage]
        self.procs[name] = ServiceProcess(name, args, self.logs, port, self.env)
        return self.procs[name]

    def start_signaling(self) -> ServiceProcess:
        region = next(iter(self.node_regions.values()))
        args = [
            "signaling",
            *self.common(self.signaling_port),
            "--region",
            region,
            "--public-key",
            str(self.public_key),
        ]
        self.procs["signaling"] = ServiceProcess("signaling", args, self.logs, self.signaling_port)
        return self.procs["signaling"]

    def start_media(self, node_id: str, *extra: str, version: str | None = None, workers: int = 1) -> ServiceProcess:
        """A media node; one process unless ``workers`` > 1 (a front and its forwarding workers). The fleet's tests
        measure freezes on 2 shared cores, where extra processes per node only add start-up CPU: fronts are
        tested on purpose (tests/media/test_front.py), not by default."""
        port = self.node_ports[node_id]
        args = [
            "media",
            *self.common(port),
            "--region",
            self.node_regions[node_id],
            "--node-id",
            node_id,
            "--ice-address",
            "127.0.0.1",
            "--public-key",
            str(self.public_key),
            "--workers",
            str(workers),
            *extra,
        ]
        env = {"CLASSMESH_VERSION": version} if version else None
        proc = ServiceProcess(node_id, args, self.logs, port, env)
        self.procs[node_id] = proc
        return proc

    @property
    def recordings(self) -> Path:
        """The recorders' shared directory (the orchestrator's default: <data-dir>/recordings)."""
        return self.tmp / "data" / "recordings"

    def start_recorder(self, worker_id: str, *, storage: Path | None = None) -> ServiceProcess:
        port = free_port()
        region = next(iter(self.node_regions.values()))
        args = [
            "recorder",
            *self.common(port),
            "--worker-id",
            worker_id,
            "--region",
            region,
            "--storage",
            str(storage or self.recorder_storage or self.recordings),
            "--ice-address",
            "127.0.0.1",
        ]
        if self.recorder_storage and storage is None:
            args += ["--spool", str(self.tmp / "spool" / worker_id)]
        proc = ServiceProcess(worker_id, args, self.logs, port, self.env)
        self.procs[worker_id] = proc
        return proc

    def start_all(self) -> None:
        self.start_orchestrator()
        self.start_signaling()
        for node_id in self.node_ports:
            self.start_media(node_id)
        for proc in self.procs.values():
            proc.wait_ready()

    def join_url(self, room: str, name: str, role: str = "student") -> str:
        token = self.issuer.mint(room=room, identity=name.lower(), name=name, role=role)
        return f"http://127.0.0.1:{self.signaling_port}/room/{room}?token={token}"

    def signaling_url(self) -> str:
        return f"http://127.0.0.1:{self.signaling_port}"

    def token(self, room: str, name: str, role: str = "student") -> str:
        return self.issuer.mint(room=room, identity=name.lower(), name=name, role=role)

    async def wait_nodes(self, count: int, within: float = 20.0) -> None:
        """Until the orchestrator sees ``count`` serving media nodes: a process that answers /readyz is not yet
        in the orchestrator's registry (its first heartbeat is on the way), and a join before that is refused."""
        url = self.procs["orchestrator"].url
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (http_json(f"{url}/healthz")[1] or {}).get("nodes") == count:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the orchestrator does not see {count} media nodes")

    def stop_all(self) -> dict[str, int]:
        return {name: proc.stop() for name, proc in reversed(list(self.procs.items()))}
