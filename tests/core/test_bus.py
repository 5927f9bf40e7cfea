"""The Bus contract: every test runs against LocalBus and RedisBus (a real redis-server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.bus import Bus, BusError, BusTimeoutError, NoResponderError, RemoteError, open_bus
from tests.conftest import BusFactory


async def test_publish_reaches_every_subscriber(bus: Bus) -> None:
    a = await bus.subscribe("room.events")
    b = await bus.subscribe("room.events")
    other = await bus.subscribe("other")
    await bus.publish("room.events", {"n": 1})
    assert await asyncio.wait_for(a.get(), 2) == {"n": 1}
    assert await asyncio.wait_for(b.get(), 2) == {"n": 1}
    await bus.publish("other", {"n": 2})
    assert await asyncio.wait_for(other.get(), 2) == {"n": 2}
    assert a._queue.empty()  # type: ignore[attr-defined]
    for sub in (a, b, other):
        await sub.close()


async def test_closed_subscription_ends_iteration(bus: Bus) -> None:
    sub = await bus.subscribe("c")
    await bus.publish("c", {"x": 1})
    got: list[dict[str, Any]] = []

    async def consume() -> None:
        async for item in sub:
            got.append(item)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    await sub.close()
    await asyncio.wait_for(task, 2)
    assert got == [{"x": 1}]


async def test_payload_is_copied_as_json(bus: Bus) -> None:
    sub = await bus.subscribe("c")
    payload = {"tuple": (1, 2), "nested": {"a": [1]}}
    await bus.publish("c", payload)
    got = await asyncio.wait_for(sub.get(), 2)
    assert got == {"tuple": [1, 2], "nested": {"a": [1]}}
    payload["nested"]["a"].append(2)  # type: ignore[index]
    assert got["nested"]["a"] == [1]
    await sub.close()


async def test_request_reply_and_remote_errors(bus_factory: BusFactory) -> None:
    server_bus, client_bus = bus_factory.open(), bus_factory.open()

    async def handler(payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("fail"):
            raise BusError("room is full", code="room_full")
        if payload.get("crash"):
            raise RuntimeError("boom")
        return {"echo": payload["x"] * 2}

    served = await server_bus.serve("media.n1", handler)
    assert await client_bus.request("media.n1", {"x": 21}, timeout=2) == {"echo": 42}
    with pytest.raises(RemoteError) as err:
        await client_bus.request("media.n1", {"fail": True}, timeout=2)
    assert err.value.code == "room_full" and "full" in str(err.value)
    with pytest.raises(RemoteError) as err:
        await client_bus.request("media.n1", {"crash": True}, timeout=2)
    assert err.value.code == "internal" and "boom" not in str(err.value)
    await served.close()
    with pytest.raises(NoResponderError):
        await client_bus.request("media.n1", {"x": 1}, timeout=2)


async def test_request_times_out(bus: Bus) -> None:
    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    served = await bus.serve("slow", slow)
    with pytest.raises(BusTimeoutError):
        await bus.request("slow", {}, timeout=0.2)
    await served.close()


async def test_one_responder_per_channel(bus: Bus) -> None:
    async def handler(payload: dict[str, Any]) -> dict[str, Any]:
        return {}

    served = await bus.serve("only", handler)
    with pytest.raises(BusError):
        await bus.serve("only", handler)
    await served.close()


async def test_stream_group_delivers_each_event_once_per_group(bus: Bus) -> None:
    for i in range(5):
        await bus.append("events", {"i": i})
    first = await bus.read_group("events", "orchestrator", "c1", count=3, block_ms=100)
    second = await bus.read_group("events", "orchestrator", "c2", count=10, block_ms=100)
    assert [d.payload["i"] for d in first] == [0, 1, 2]
    assert [d.payload["i"] for d in second] == [3, 4]
    other_group = await bus.read_group("events", "dashboard", "c1", count=10, block_ms=100)
    assert [d.payload["i"] for d in other_group] == [0, 1, 2, 3, 4]
    assert await bus.read_group("events", "orchestrator", "c1", block_ms=50) == []


async def test_read_group_blocks_until_an_event_arrives(bus_factory: BusFactory) -> None:
    reader, writer = bus_factory.open(), bus_factory.open()
    await reader.ensure_group("ev", "g")
    task = asyncio.create_task(reader.read_group("ev", "g", "c", block_ms=3000))
    await asyncio.sleep(0.2)
    assert not task.done()
    await writer.append("ev", {"late": True})
    got = await asyncio.wait_for(task, 3)
    assert [d.payload for d in got] == [{"late": True}]


async def test_unacked_event_is_redelivered_to_another_consumer(bus_factory: BusFactory) -> None:
    producer, dying, survivor = bus_factory.open(), bus_factory.open(), bus_factory.open()
    await survivor.ensure_group("bookings", "provisioner")
    await producer.append("bookings", {"booking": "b1"})
    await producer.append("bookings", {"booking": "b2"})
    taken = await dying.read_group("bookings", "provisioner", "worker-a", count=1, block_ms=500)
    assert [d.payload["booking"] for d in taken] == ["b1"]
    # worker-a dies before acknowledging b1; worker-b processes what is new and acknowledges it
    fresh = await survivor.read_group("bookings", "provisioner", "worker-b", count=10, block_ms=500)
    assert [d.payload["booking"] for d in fresh] == ["b2"]
    await survivor.ack("bookings", "provisioner", fresh[0].id)
    assert await survivor.claim_stale("bookings", "provisioner", "worker-b", min_idle_ms=10_000) == []
    await asyncio.sleep(0.15)
    reclaimed = await survivor.claim_stale("bookings", "provisioner", "worker-b", min_idle_ms=100)
    assert [d.payload["booking"] for d in reclaimed] == ["b1"]
    assert reclaimed[0].id == taken[0].id  # a stable id lets consumers be idempotent
    await survivor.ack("bookings", "provisioner", reclaimed[0].id)
    await asyncio.sleep(0.15)
    assert await survivor.claim_stale("bookings", "provisioner", "worker-b", min_idle_ms=100) == []


async def test_keys_with_ttl_and_conditional_writes(bus: Bus) -> None:
    assert await bus.kv_get("room:r1:node") is None
    assert await bus.kv_set("room:r1:node", "n1")
    assert await bus.kv_get("room:r1:node") == "n1"
    assert not await bus.kv_set("room:r1:node", "n2", only_if_absent=True)
    assert await bus.kv_get("room:r1:node") == "n1"
    assert not await bus.kv_delete("room:r1:node", if_value="n2")
    assert await bus.kv_delete("room:r1:node", if_value="n1")
    assert await bus.kv_get("room:r1:node") is None
    assert await bus.kv_set("lease", "w1", ttl_ms=150, only_if_absent=True)
    assert not await bus.kv_set("lease", "w2", ttl_ms=150, only_if_absent=True)
    await asyncio.sleep(0.3)
    assert await bus.kv_get("lease") is None
    assert await bus.kv_set("lease", "w2", ttl_ms=150, only_if_absent=True)


def test_open_bus_refuses_unknown_urls() -> None:
    with pytest.raises(ValueError, match="unsupported bus URL"):
        open_bus("kafka://x")


async def test_renew_extends_only_our_own_lease_and_incr_counts(bus: Bus) -> None:
    assert await bus.kv_set("leader", "a", ttl_ms=200, only_if_absent=True)
    assert not await bus.kv_renew("leader", "b", ttl_ms=5000)
    assert await bus.kv_renew("leader", "a", ttl_ms=5000)
    await asyncio.sleep(0.35)
    assert await bus.kv_get("leader") == "a"
    assert not await bus.kv_renew("missing", "a", ttl_ms=100)
    assert [await bus.incr("fence") for _ in range(3)] == [1, 2, 3]
