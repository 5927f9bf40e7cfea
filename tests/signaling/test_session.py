"""Resumable sessions: across signaling processes sharing a bus, with replay, expiry and leave."""

from __future__ import annotations

import asyncio

from signaling.errors import CLOSE_RESUMED_ELSEWHERE
from signaling.session import SessionRecord, session_key
from tests.signaling.conftest import Stack


async def wait_for(predicate: object, timeout: float = 3.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while True:  # polling a test double's record: there is no event to wait on
            if predicate():
                return
            await asyncio.sleep(0.02)


async def test_resume_on_another_instance_reattaches_without_rejoining(any_stack: Stack) -> None:
    stack = any_stack
    a, b = await stack.signaling(), await stack.signaling()
    client = await stack.connect(a)
    welcome = await client.hello(stack.keys.token(identity="alice"))
    pid = welcome["participant_id"]
    offer = await client.expect("subscriber_offer")
    assert offer["seq"] == 1
    assert (await client.request({"type": "subscriber_answer", "sdp": offer["sdp"]}))["type"] == "ok"
    last_seq = client.max_seq
    await client.ws.close()

    # while nobody is attached, the room goes on: bob joins and says something
    bob = await stack.connect(a)
    await bob.hello(stack.keys.token(identity="bob"))
    assert (await bob.request({"type": "chat", "text": "anyone there?"}))["type"] == "ok"
    await asyncio.sleep(0.1)

    again = await stack.connect(b)
    resumed = await again.request(
        {"type": "resume", "v": 1, "resume_token": welcome["resume_token"], "last_seq": last_seq}
    )
    assert resumed["type"] == "welcome" and resumed["resumed"] is True
    assert resumed["participant_id"] == pid
    assert [p["identity"] for p in resumed["participants"]] == ["bob"]
    assert resumed["you"]["identity"] == "alice"
    # what was missed is replayed, in order, with seq continuing
    joined = await again.expect("participant_joined")
    chat = await again.expect("data")
    assert joined["participant"]["identity"] == "bob"
    assert chat["body"] == {"text": "anyone there?"} and chat["from"]["identity"] == "bob"
    assert last_seq < joined["seq"] < chat["seq"]
    # the node was asked for state, never for a second join
    assert len([r for r in stack.node.ops("join") if r["identity"] == "alice"]) == 1
    assert stack.node.ops("state")[-1]["participant_id"] == pid
    # and the session keeps working from the new instance: new messages still arrive, seq still grows
    assert (await bob.request({"type": "hand", "raised": True}))["type"] == "ok"
    hand = await again.expect("data")
    assert hand["kind"] == "hand" and hand["seq"] > chat["seq"]
    assert (await again.request({"type": "chat", "text": "I am back"}))["type"] == "ok"
    # the record now belongs to instance b
    raw = await stack.open_bus().kv_get(session_key(welcome["resume_token"]))
    assert raw is not None and SessionRecord.from_json(raw).owner == b.service.instance_id  # type: ignore[attr-defined]
    assert stack.node.ops("leave") == []


async def test_resume_redelivers_an_unanswered_offer(stack: Stack) -> None:
    a = await stack.signaling()
    client = await stack.connect(a)
    welcome = await client.hello(stack.keys.token())
    await client.expect("subscriber_offer")
    await client.ws.close()
    again = await stack.connect(a)
    await again.request({"type": "resume", "v": 1, "resume_token": welcome["resume_token"], "last_seq": 1})
    offer = await again.expect("subscriber_offer")
    assert offer["seq"] > 1 and offer["sdp"].startswith("v=0")


async def test_resume_while_the_old_socket_is_open_closes_it(any_stack: Stack) -> None:
    stack = any_stack
    a, b = await stack.signaling(), await stack.signaling()
    old = await stack.connect(a)
    welcome = await old.hello(stack.keys.token())
    new = await stack.connect(b)
    resumed = await new.request({"type": "resume", "v": 1, "resume_token": welcome["resume_token"]})
    assert resumed["type"] == "welcome"
    assert await old.closed() == CLOSE_RESUMED_ELSEWHERE
    await wait_for(lambda: not a.service.sessions)  # type: ignore[attr-defined]
    assert len(b.service.sessions) == 1  # type: ignore[attr-defined]
    assert stack.node.ops("leave") == []


async def test_session_expiry_sends_leave(any_stack: Stack) -> None:
    stack = any_stack
    host = await stack.signaling(resume_window_s=0.5)
    client = await stack.connect(host)
    welcome = await client.hello(stack.keys.token())
    await client.ws.close()
    await asyncio.sleep(0.2)
    assert stack.node.ops("leave") == []  # still resumable
    await wait_for(lambda: stack.node.ops("leave"), timeout=3.0)
    assert stack.node.ops("leave")[0]["participant_id"] == welcome["participant_id"]
    assert await stack.open_bus().kv_get(session_key(welcome["resume_token"])) is None
    again = await stack.connect(host)
    reply = await again.request({"type": "resume", "v": 1, "resume_token": welcome["resume_token"]})
    assert reply["code"] == "session_expired"
    # the fallback works on the same socket: join again with the token
    await again.hello(stack.keys.token())


async def test_an_attached_session_does_not_expire(stack: Stack) -> None:
    host = await stack.signaling(resume_window_s=0.3)
    client = await stack.connect(host)
    welcome = await client.hello(stack.keys.token())
    await asyncio.sleep(1.0)
    assert stack.node.ops("leave") == []
    assert await stack.open_bus().kv_get(session_key(welcome["resume_token"])) is not None
    assert (await client.request({"type": "chat", "text": "still here"}))["type"] == "ok"


async def test_resume_with_an_unknown_token_is_expired(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    reply = await client.request({"type": "resume", "v": 1, "resume_token": "never-issued"})
    assert reply["code"] == "session_expired"
    assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_leave_tells_the_node_and_ends_the_session(stack: Stack) -> None:
    host = await stack.signaling()
    client, other = await stack.connect(host), await stack.connect(host)
    welcome = await client.hello(stack.keys.token(identity="alice"))
    await other.hello(stack.keys.token(identity="bob"))
    assert (await client.request({"type": "leave"}))["type"] == "ok"
    assert await client.closed() == 1000
    assert stack.node.ops("leave")[0]["participant_id"] == welcome["participant_id"]
    left = await other.expect("participant_left")
    assert left["participant_id"] == welcome["participant_id"]
    assert await stack.open_bus().kv_get(session_key(welcome["resume_token"])) is None


async def test_resume_after_the_process_died_uses_node_state(any_stack: Stack) -> None:
    """The owning process is gone without a trace (no handover responder): resume still works."""
    stack = any_stack
    a, b = await stack.signaling(), await stack.signaling()
    client = await stack.connect(a)
    welcome = await client.hello(stack.keys.token())
    await a.close()  # lets go of sessions without leaving the room
    resumed_client = await stack.connect(b)
    reply = await resumed_client.request(
        {"type": "resume", "v": 1, "resume_token": welcome["resume_token"], "last_seq": 5}
    )
    assert reply["type"] == "welcome" and reply["participant_id"] == welcome["participant_id"]
    offer = await resumed_client.expect("subscriber_offer")  # still pending on the node
    assert offer["seq"] > 5
    assert stack.node.ops("leave") == []
