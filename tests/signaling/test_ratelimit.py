"""Per-connection rate limits: a flood is refused with rate_limited, then the socket recovers."""

from __future__ import annotations

import asyncio

from signaling.ratelimit import TokenBucket
from tests.signaling.conftest import Stack


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=5, burst=10, clock=lambda: now[0])
    assert all(bucket.take() for _ in range(10))
    assert not bucket.take()
    now[0] += 0.2  # one token back
    assert bucket.take()
    assert not bucket.take()
    now[0] += 100
    assert sum(bucket.take() for _ in range(20)) == 10  # never more than the burst


async def test_message_flood_is_rate_limited_and_the_socket_recovers(stack: Stack) -> None:
    host = await stack.signaling(message_rate=50, message_burst=100)
    client = await stack.connect(host)
    for i in range(160):
        await client.send({"type": "ping", "id": i})
    replies = [await client.recv() for _ in range(160)]
    codes = [r.get("code") for r in replies]
    assert 100 <= codes.count(None) <= 115  # the burst plus what refilled while the flood was sent
    assert codes.count("rate_limited") == 160 - codes.count(None)
    await asyncio.sleep(0.5)
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_chat_is_limited_separately(stack: Stack) -> None:
    host = await stack.signaling(data_rate=5, data_burst=10)
    client = await stack.connect(host)
    await client.hello(stack.keys.token())
    results = [(await client.request({"type": "chat", "text": f"spam {i}"}))["type"] for i in range(20)]
    assert results[:10] == ["ok"] * 10
    assert results.count("error") >= 8
    assert len(stack.node.ops("data")) == results.count("ok")
    # other messages are not affected by the chat limit
    assert (await client.request({"type": "mute", "source": "camera", "muted": True}))["type"] == "ok"
    await asyncio.sleep(0.5)
    assert (await client.request({"type": "reaction", "emoji": "clap"}))["type"] == "ok"


async def test_a_client_that_keeps_flooding_is_disconnected(stack: Stack) -> None:
    host = await stack.signaling(message_rate=1, message_burst=1)
    client = await stack.connect(host)
    for _ in range(700):
        await client.send("x")
    assert await client.closed(timeout=5) == 1008
