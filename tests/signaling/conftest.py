"""Fixtures for signaling tests: a real SignalingService behind a real ServiceHost on a loopback port, fake
node/orchestrator responders on the bus, and a small WebSocket client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from core.bus import Bus, LocalBus
from core.service import ServiceHost
from core.tokens import Role, TokenIssuer, TokenVerifier, generate_private_key, private_key_pem, public_key_pem
from signaling.app import SignalingConfig, SignalingService
from tests.conftest import BusFactory
from tests.signaling.fakes import FakeNode, FakeOrchestrator

REGION = "eu-central"


@dataclass(frozen=True)
class Keys:
    issuer: TokenIssuer
    verifier: TokenVerifier
    other_issuer: TokenIssuer  # a key signaling does not trust (forged tokens)

    def token(self, room: str = "room-1", identity: str = "alice", role: Role | str = "student", **kwargs: Any) -> str:
        return self.issuer.mint(room=room, identity=identity, name=identity.title(), role=role, **kwargs)


@pytest.fixture(scope="session")
def keys() -> Keys:
    key, other = generate_private_key(), generate_private_key()
    return Keys(
        TokenIssuer(private_key_pem(key)), TokenVerifier(public_key_pem(key)), TokenIssuer(private_key_pem(other))
    )


class Client:
    """A browser's view of the signaling socket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, msg: dict[str, Any] | str) -> None:
        await self.ws.send_str(msg if isinstance(msg, str) else json.dumps(msg))

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        frame = await self.ws.receive(timeout=timeout)
        if frame.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {frame.type!r} {frame.data!r} {frame.extra!r}")
        msg: dict[str, Any] = json.loads(frame.data)
        self.received.append(msg)
        return msg

    async def expect(self, type_name: str, timeout: float = 3.0) -> dict[str, Any]:
        """The next message of ``type_name`` (others in between are kept in ``received``)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv(timeout)
                if msg["type"] == type_name:
                    return msg

    async def request(self, msg: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
        """Send ``msg`` with an id and wait for the reply carrying that id."""
        request_id = f"r{len(self.received)}-{id(msg)}"
        await self.send({**msg, "id": request_id})
        async with asyncio.timeout(timeout):
            while True:
                reply = await self.recv(timeout)
                if reply.get("id") == request_id:
                    return reply

    async def hello(self, token: str, **extra: Any) -> dict[str, Any]:
        reply = await self.request({"type": "hello", "v": 1, "token": token, **extra})
        assert reply["type"] == "welcome", reply
        return reply

    async def closed(self, timeout: float = 3.0) -> int | None:
        """Wait for the server to close the socket; its close code."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.receive()
                if frame.type is aiohttp.WSMsgType.CLOSE:
                    return int(frame.data)  # the code the server sent
                if frame.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return self.ws.close_code
                if frame.type is aiohttp.WSMsgType.TEXT:
                    self.received.append(json.loads(frame.data))

    @property
    def max_seq(self) -> int:
        return max((m["seq"] for m in self.received if "seq" in m and m["type"] != "welcome"), default=0)


class Stack:
    """One bus backend shared by a fake node, a fake orchestrator and any number of signaling hosts."""

    def __init__(self, factory: BusFactory | None, keys: Keys) -> None:
        self._factory = factory
        self._local = LocalBus() if factory is None else None
        self.keys = keys
        self.hosts: list[ServiceHost] = []
        self.http = aiohttp.ClientSession()
        self.node: FakeNode
        self.orchestrator: FakeOrchestrator

    def open_bus(self) -> Bus:
        if self._factory is not None:
            return self._factory.open()
        assert self._local is not None
        return self._local

    async def start(self) -> Stack:
        self.node = await FakeNode(self.open_bus()).start()
        self.orchestrator = await FakeOrchestrator(self.open_bus()).start()
        return self

    async def signaling(self, **config: Any) -> ServiceHost:
        service = SignalingService(
            self.open_bus(),
            self.keys.verifier,
            region=REGION,
            public_url="http://127.0.0.1",
            config=SignalingConfig(**config),
        )
        host = ServiceHost(service, "127.0.0.1", 0)
        await host.start()
        self.hosts.append(host)
        return host

    async def connect(self, host: ServiceHost) -> Client:
        ws = await self.http.ws_connect(f"{host.url}/ws")
        return Client(ws)

    async def close(self) -> None:
        for host in reversed(self.hosts):
            await host.close()
        await self.http.close()
        await self.node.stop()
        await self.orchestrator.stop()
        if self._local is not None:
            await self._local.close()


@pytest.fixture
async def stack(keys: Keys) -> AsyncIterator[Stack]:
    """Everything on one in-process bus."""
    s = await Stack(None, keys).start()
    yield s
    await s.close()


@pytest.fixture
async def any_stack(bus_factory: BusFactory, keys: Keys) -> AsyncIterator[Stack]:
    """The same on each bus implementation (LocalBus, and Redis with one connection per service)."""
    s = await Stack(bus_factory, keys).start()
    yield s
    await s.close()
