"""One adapter per system under test.

Each adapter has two halves. The server half (:class:`Target`) runs in the benchmark's main process:
it starts the SFU on loopback ports, prepares rooms, reports the SFU's process ids for CPU accounting
and stops it. It hands the generator processes a picklable :class:`Endpoint`. The client half
(:class:`Client`, made by :func:`client_for` inside a generator process) connects aiortc peers as
publishers or subscribers through the target's own signaling.

Load shape, the same for every target: room ``i`` holds publisher ``i`` and its subscribers, each
subscriber receives that one publisher (a lecture per room).

* ``janus``: Janus VideoRoom (``/usr/bin/janus``) with the configs of bench/janus/ (loopback only, no
  STUN, only VideoRoom and the HTTP transport). Rooms are created through the HTTP API.
* ``mediarelay``: bench/loadgen/mediarelay_sfu.py (aiortc MediaRelay: decode once, encode per
  subscriber).
* ``classmesh``: ``classmesh media``, ``signaling`` and ``orchestrator`` as separate processes on a
  redis-server, with a one-region regions file on free loopback ports; only the media node is measured (with
  ``workers`` > 1 that is its front and its forwarding worker processes).
  Clients speak the v1 signaling protocol (docs/signaling.md) over the WebSocket with tokens minted
  with a key made for the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from .cpu import descendants
from .janus import JanusHandle, JanusSession

REPO = Path(__file__).resolve().parents[2]
JANUS_CONFIGS = REPO / "bench" / "janus"
JANUS_LIBDIR = Path("/usr/lib/x86_64-linux-gnu/janus")
TARGETS = ("classmesh", "janus", "mediarelay")


class TargetUnavailable(Exception):
    """The target cannot run here (not installed, or its stack does not come up); the message says why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a generator process needs to reach a target (picklable)."""

    kind: str
    url: str
    rooms: tuple[str, ...]
    audio: bool
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(
    url: str, timeout: float, process: subprocess.Popen[bytes] | None = None, *, ready: bool = False
) -> None:
    """Wait until ``url`` answers (below 500, or 200 with ``ready``)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise TargetUnavailable(f"the process exited with code {process.returncode} before {url} answered")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with http.get(url) as response:
                    if response.status == 200 or (response.status < 500 and not ready):
                        return
            await asyncio.sleep(0.1)
    raise TargetUnavailable(f"{url} did not answer within {timeout:.0f}s")


AUTOGROUP_NICE: int | None = None  # set once by bench/sfu_capacity.py from --priority
SFU_REALTIME: int | None = None  # set once by bench/sfu_capacity.py from --realtime


def realtime_refused(priority: int) -> str | None:
    """Why this process may not run a child under SCHED_RR at ``priority`` (None: it may). Tried on this
    process itself and undone at once."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except (OSError, OverflowError) as exc:
        return str(exc)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return None


def _die_with_parent(sfu: bool = False) -> None:
    """In the child before exec (after setsid, so in its own scheduler autogroup): get SIGTERM when
    the benchmark process dies, however it dies; apply the run's autogroup nice value, and for the
    SFU the run's real-time priority (inherited by every thread and process it starts)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if AUTOGROUP_NICE is not None:
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
            f.write(str(AUTOGROUP_NICE))
    if sfu and SFU_REALTIME is not None:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(SFU_REALTIME))


async def _wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise TargetUnavailable(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class Target(Protocol):
    name: str

    async def start(self, publishers: int, audio: bool) -> Endpoint: ...

    def pids(self) -> list[int]: ...

    async def stop(self) -> None: ...


class _ProcessTarget:
    """A target made of server processes, each with a log file; the one started with ``sfu=True`` is
    the SFU whose process tree is measured."""

    name = ""

    def __init__(self) -> None:
        self._processes: list[tuple[str, subprocess.Popen[bytes], Any]] = []
        self._sfu: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))

    def _spawn(
        self, argv: list[str], env: dict[str, str] | None = None, label: str = "server", *, sfu: bool = False
    ) -> subprocess.Popen[bytes]:
        log = (self._dir / f"{label}.log").open("wb")
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, sfu),
        )
        self._processes.append((label, process, log))
        if sfu:
            self._sfu = process
        return process

    def log_tail(self, label: str = "server", lines: int = 15) -> str:
        try:
            text = (self._dir / f"{label}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def pids(self) -> list[int]:
        return descendants(self._sfu.pid) if self._sfu is not None else []

    async def stop(self) -> None:
        processes, self._processes, self._sfu = self._processes, [], None
        for _, process, log in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    await asyncio.to_thread(process.wait, 10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    await asyncio.to_thread(process.wait)
            log.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# -- janus --------------------------------------------------------------------------------------------


def janus_binary() -> str | None:
    return shutil.which("janus")


# Janus (libnice) never gathers host candidates on a loopback interface. The benchmark therefore runs
# inside a private network namespace (see bench/sfu_capacity.py) that has, besides lo, one veth
# interface carrying 127.0.0.2/32 and connected to nothing; Janus gathers on that interface and the
# generator's peers use 127.0.0.2 as their host candidate. No packet can leave the namespace.
JANUS_INTERFACE = "bench0"
JANUS_ADDRESS = "127.0.0.2"


class JanusTarget(_ProcessTarget):
    name = "janus"

    def __init__(self, interface: str | None) -> None:
        super().__init__()
        self._interface = interface or ""

    async def start(self, publishers: int, audio: bool) -> Endpoint:
        binary = janus_binary()
        if binary is None:
            raise TargetUnavailable("janus is not installed (apt-get install janus); see bench/README.md")
        if not self._interface:
            raise TargetUnavailable(
                "janus needs the benchmark's private network namespace (root and unshare): libnice never gathers "
                "candidates on lo, so Janus listens on a veth with 127.0.0.2 that exists only inside it"
            )
        port = free_port()
        configs = self._dir / "configs"
        configs.mkdir()
        for template in JANUS_CONFIGS.glob("*.jcfg"):
            text = template.read_text()
            text = text.replace("@CONFIGS@", str(configs)).replace("@LIBDIR@", str(JANUS_LIBDIR))
            text = text.replace("@HTTP_PORT@", str(port)).replace("@ICE_ENFORCE@", self._interface)
            (configs / template.name).write_text(text)
        process = self._spawn(
            [binary, "-F", str(configs), "-C", str(configs / "janus.jcfg"), "--disable-colors"], sfu=True
        )
        url = f"http://127.0.0.1:{port}/janus"
        try:
            await wait_http(url + "/info", 15, process)
        except TargetUnavailable as exc:
            raise TargetUnavailable(f"janus did not start: {exc}\n{self.log_tail()}") from None
        rooms = tuple(str(1000 + i) for i in range(publishers))
        session = JanusSession(url)
        await session.open()
        try:
            handle = await session.attach()
            for room in rooms:
                await handle.request(
                    {
                        "request": "create",
                        "room": int(room),
                        "publishers": 1,
                        "videocodec": "vp8",
                        "audiocodec": "opus",
                        "bitrate": 0,
                        "notify_joining": False,
                        "record": False,
                    }
                )
        finally:
            await session.close()
        return Endpoint(self.name, url, rooms, audio, {"ice_address": JANUS_ADDRESS})


class JanusClient:
    """Publishers and subscribers on one Janus session (one long poll per generator process)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._session = JanusSession(endpoint.url)
        self._opened = False
        self._lock = asyncio.Lock()
        self._handles: list[JanusHandle] = []

    async def _open(self) -> None:
        async with self._lock:
            if not self._opened:
                await self._session.open()
                self._opened = True

    async def publish(self, room: int, pc: RTCPeerConnection) -> None:
        await self._open()
        handle = await self._session.attach()
        self._handles.append(handle)
        room_id = int(self._endpoint.rooms[room])
        await handle.message({"request": "join", "ptype": "publisher", "room": room_id, "id": room_id + 1})
        await pc.setLocalDescription(await pc.createOffer())
        event = await handle.message(
            {"request": "publish"},
            jsep={"type": "offer", "sdp": pc.localDescription.sdp, "trickle": False},
        )
        jsep = event.get("jsep")
        if not jsep:
            raise RuntimeError(f"janus answered publish without SDP: {event}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="answer"))

    async def subscribe(self, room: int, pc: RTCPeerConnection, prepare: Callable[[], None]) -> None:
        await self._open()
        handle = await self._session.attach()
        self._handles.append(handle)
        room_id = int(self._endpoint.rooms[room])
        event = await handle.message(
            {"request": "join", "ptype": "subscriber", "room": room_id, "streams": [{"feed": room_id + 1}]}
        )
        jsep = event.get("jsep")
        if not jsep:
            raise RuntimeError(f"janus sent no offer to the subscriber: {event}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="offer"))
        prepare()
        await pc.setLocalDescription(await pc.createAnswer())
        await handle.message(
            {"request": "start"}, jsep={"type": "answer", "sdp": pc.localDescription.sdp, "trickle": False}
        )

    async def close(self) -> None:
        if self._opened:
            await self._session.close()


# -- mediarelay ---------------------------------------------------------------------------------------


class MediaRelayTarget(_ProcessTarget):
    name = "mediarelay"

    async def start(self, publishers: int, audio: bool) -> Endpoint:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        process = self._spawn(
            [sys.executable, "-m", "bench.loadgen.mediarelay_sfu", "--port", str(port)], env, sfu=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_http(url + "/healthz", 20, process)
        except TargetUnavailable as exc:
            raise TargetUnavailable(f"the MediaRelay server did not start: {exc}\n{self.log_tail()}") from None
        return Endpoint(self.name, url, tuple(f"room{i}" for i in range(publishers)), audio)


class MediaRelayClient:
    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def _exchange(self, path: str, pc: RTCPeerConnection) -> None:
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer"}
        for _ in range(50):
            async with self._http.post(self._endpoint.url + path, json=body) as response:
                if response.status == 409:  # the publisher has not arrived yet
                    await asyncio.sleep(0.1)
                    continue
                response.raise_for_status()
                answer = await response.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            return
        raise RuntimeError(f"{path}: the room never got a publisher")

    async def publish(self, room: int, pc: RTCPeerConnection) -> None:
        await self._exchange(f"/publish/{self._endpoint.rooms[room]}", pc)

    async def subscribe(self, room: int, pc: RTCPeerConnection, prepare: Callable[[], None]) -> None:
        pc.addTransceiver("video", direction="recvonly")
        if self._endpoint.audio:
            pc.addTransceiver("audio", direction="recvonly")
        prepare()
        await self._exchange(f"/subscribe/{self._endpoint.rooms[room]}", pc)

    async def close(self) -> None:
        await self._http.close()


# -- classmesh ----------------------------------------------------------------------------------------

_REGION = "eu-central"


class ClassmeshTarget(_ProcessTarget):
    """classmesh as in production, one process per service on a shared redis-server: the media node
    (the SFU, the only process measured), signaling and the orchestrator, with a one-region regions
    file written for the run (free loopback ports, no STUN/TURN)."""

    name = "classmesh"

    def __init__(self, workers: int = 1) -> None:
        super().__init__()
        self.workers = workers

    def roles(self) -> dict[int, str]:
        """The measured processes by role: ``node`` (one process), or ``front`` and ``worker``."""
        if self._sfu is None:
            return {}
        root = self._sfu.pid
        if self.workers == 1:
            return dict.fromkeys(descendants(root), "node")
        return {pid: "front" if pid == root else "worker" for pid in descendants(root)}

    async def start(self, publishers: int, audio: bool) -> Endpoint:
        binary = _classmesh_binary()
        if binary is None:
            raise TargetUnavailable("the classmesh CLI is not installed (pip install -e . in the venv)")
        redis = shutil.which("redis-server")
        if redis is None:
            raise TargetUnavailable("redis-server is not installed (apt-get install redis-server); classmesh's bus")
        try:
            from core.tokens import TokenIssuer, load_or_create_dev_keys
        except ImportError as exc:
            raise TargetUnavailable(f"classmesh's core package cannot be imported: {exc}") from None
        private_key, public_key = load_or_create_dev_keys(self._dir / "keys")
        issuer = TokenIssuer.from_file(private_key)
        redis_port, media_port, signaling_port, orchestrator_port = (free_port() for _ in range(4))
        regions_file = self._dir / "regions.yaml"
        regions_file.write_text(
            "regions:\n"
            f"  {_REGION}:\n"
            "    display_name: benchmark\n"
            "    lat: 50.11\n"
            "    lon: 8.68\n"
            "    capacity:\n"
            "      streams_per_node: 100000\n"
            "      nodes_min: 1\n"
            "    stun: []\n"
            "    turn: []\n"
            "    nodes:\n"
            f"      - id: {_REGION}-bench\n"
            f"        port: {media_port}\n"
        )
        bus = f"redis://127.0.0.1:{redis_port}/0"
        redis_dir = self._dir / "redis"
        redis_dir.mkdir()

        def common(port: int) -> list[str]:
            return ["--host", "127.0.0.1", "--port", str(port), "--bus", bus, "--regions-file", str(regions_file)]

        self._spawn(
            [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(redis_dir)],
            label="redis",
        )  # fmt: skip
        await _wait_tcp(redis_port, 10)
        media = self._spawn(
            [binary, "media", *common(media_port), "--region", _REGION, "--node-id", f"{_REGION}-bench",
             "--ice-address", "127.0.0.1", "--public-key", str(public_key), "--workers", str(self.workers)],
            label="media",
            sfu=True,
        )  # fmt: skip
        self._spawn(
            [binary, "orchestrator", *common(orchestrator_port), "--data-dir", str(self._dir / "data"),
             "--private-key", str(private_key), "--signaling-url", f"http://127.0.0.1:{signaling_port}"],
            label="orchestrator",
        )  # fmt: skip
        self._spawn(
            [binary, "signaling", *common(signaling_port), "--region", _REGION, "--public-key", str(public_key)],
            label="signaling",
        )
        signaling = f"http://127.0.0.1:{signaling_port}"
        for label, url, process in (
            ("media", f"http://127.0.0.1:{media_port}/readyz", media),
            ("orchestrator", f"http://127.0.0.1:{orchestrator_port}/readyz", None),
            ("signaling", signaling + "/readyz", None),
        ):
            try:
                await wait_http(url, 60, process, ready=True)  # a front waits for its workers first
            except TargetUnavailable as exc:
                raise TargetUnavailable(f"classmesh {label} did not come up: {exc}\n{self.log_tail(label)}") from None
        try:
            await _wait_nodes(f"http://127.0.0.1:{orchestrator_port}/healthz", 1, 30)
        except TargetUnavailable as exc:
            raise TargetUnavailable(f"{exc}\n{self.log_tail('media')}\n{self.log_tail('orchestrator')}") from None
        rooms = tuple(f"bench-r{i}" for i in range(publishers))
        tokens = {
            f"pub:{i}": issuer.mint(
                room=room, identity=f"bench-pub-{i}", name=f"publisher {i}", role="instructor", ttl_s=3600.0,
                region=_REGION,
            )
            for i, room in enumerate(rooms)
        }  # fmt: skip
        return Endpoint(
            self.name,
            signaling.replace("http://", "ws://") + "/ws",
            rooms,
            audio,
            {
                "tokens": tokens,
                "private_key": str(private_key),
                "region": _REGION,
                "signaling": signaling,
                "media": f"http://127.0.0.1:{media_port}",
            },
        )


async def _wait_nodes(url: str, count: int, timeout: float) -> None:
    """Wait until the orchestrator has registered ``count`` serving media nodes (placement needs one)."""
    deadline = time.monotonic() + timeout
    body: Any = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(url) as response:
                    body = await response.json(content_type=None)
                    if isinstance(body, dict) and int(body.get("nodes", 0) or 0) >= count:
                        return
            await asyncio.sleep(0.1)
    raise TargetUnavailable(f"the orchestrator never saw the media node ({url} said {body})")


def _classmesh_binary() -> str | None:
    candidate = Path(sys.executable).with_name("classmesh")
    return str(candidate) if candidate.exists() else shutil.which("classmesh")


class _SignalingSession:
    """One participant's v1 signaling WebSocket (docs/signaling.md)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self._http = http
        self._url = url
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def open(self, token: str, room: str) -> dict[str, Any]:
        self._ws = await self._http.ws_connect(self._url, heartbeat=20)
        self._reader = asyncio.create_task(self._read(), name="bench-signaling-reader")
        return await self.request({"type": "hello", "v": 1, "token": token, "room": room})

    async def request(self, message: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        await self._ws.send_str(json.dumps({**message, "id": request_id}))
        reply = await asyncio.wait_for(future, timeout)
        if reply.get("type") == "error":
            raise RuntimeError(f"signaling refused {message['type']}: {reply.get('code')}: {reply.get('message')}")
        return reply

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            request_id = message.get("id")
            if isinstance(request_id, int) and request_id in self._waiting:
                future = self._waiting.pop(request_id)
                if not future.done():
                    future.set_result(message)
            elif message.get("type") == "subscriber_offer":
                self.offers.put_nowait(message)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the signaling socket closed"))

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.send_str(json.dumps({"type": "leave"}))
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


class ClassmeshClient:
    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self._sessions: list[_SignalingSession] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._issuer: Any = None

    def _token(self, key: str, room: str, identity: str) -> str:
        token = self._endpoint.extra["tokens"].get(key)
        if token is not None:
            return str(token)
        if self._issuer is None:
            from core.tokens import TokenIssuer

            self._issuer = TokenIssuer.from_file(self._endpoint.extra["private_key"])
        return str(
            self._issuer.mint(
                room=room, identity=identity, name=identity, role="observer", ttl_s=3600.0,
                region=self._endpoint.extra["region"],
            )
        )  # fmt: skip

    async def _session(self, key: str, room: str, identity: str) -> _SignalingSession:
        session = _SignalingSession(self._http, self._endpoint.url)
        self._sessions.append(session)
        await session.open(self._token(key, room, identity), room)
        return session

    async def publish(self, room: int, pc: RTCPeerConnection) -> None:
        name = self._endpoint.rooms[room]
        session = await self._session(f"pub:{room}", name, f"bench-pub-{room}")
        await pc.setLocalDescription(await pc.createOffer())
        sources = {t.mid: ("camera" if t.kind == "video" else "microphone") for t in pc.getTransceivers() if t.mid}
        reply = await session.request({"type": "publish", "sdp": pc.localDescription.sdp, "sources": sources})
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))

    async def subscribe(self, room: int, pc: RTCPeerConnection, prepare: Callable[[], None]) -> None:
        name = self._endpoint.rooms[room]
        identity = f"bench-sub-{os.getpid()}-{len(self._sessions)}"
        session = await self._session(f"sub:{identity}", name, identity)
        while True:
            offer = await asyncio.wait_for(session.offers.get(), 20)
            has_video = any(t.get("kind") == "video" for t in offer.get("tracks", {}).values())
            await self._answer(session, pc, offer, prepare)
            if has_video:
                break
        self._tasks.append(asyncio.create_task(self._renegotiate(session, pc, prepare), name="bench-renegotiate"))

    async def _answer(
        self, session: _SignalingSession, pc: RTCPeerConnection, offer: dict[str, Any], prepare: Callable[[], None]
    ) -> None:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        prepare()
        await pc.setLocalDescription(await pc.createAnswer())
        await session.request({"type": "subscriber_answer", "sdp": pc.localDescription.sdp})

    async def _renegotiate(
        self, session: _SignalingSession, pc: RTCPeerConnection, prepare: Callable[[], None]
    ) -> None:
        while True:
            offer = await session.offers.get()
            if pc.signalingState == "closed":
                return  # the run is over: other generators' publishers leaving make the node renegotiate
            try:
                await self._answer(session, pc, offer, prepare)
            except Exception as exc:  # a late renegotiation must not end the run
                print(f"classmesh renegotiation failed: {exc}", file=sys.stderr)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self._sessions), return_exceptions=True)
        await self._http.close()


# -----------------------------------------------------------------------------------------------------


class Client(Protocol):
    async def publish(self, room: int, pc: RTCPeerConnection) -> None: ...

    async def subscribe(self, room: int, pc: RTCPeerConnection, prepare: Callable[[], None]) -> None: ...

    async def close(self) -> None: ...


def make_target(name: str, janus_interface: str | None = None, workers: int = 1) -> Target:
    if name == "janus":
        return JanusTarget(janus_interface)
    if name == "mediarelay":
        return MediaRelayTarget()
    if name == "classmesh":
        return ClassmeshTarget(workers)
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


def client_for(endpoint: Endpoint) -> Client:
    if endpoint.kind == "janus":
        return JanusClient(endpoint)
    if endpoint.kind == "mediarelay":
        return MediaRelayClient(endpoint)
    if endpoint.kind == "classmesh":
        return ClassmeshClient(endpoint)
    raise ValueError(f"unknown target {endpoint.kind!r}")
