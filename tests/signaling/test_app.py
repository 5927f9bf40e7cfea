"""The signaling service end to end over a real socket: placement, relaying, forwarding, pages, health."""

from __future__ import annotations

import time

import aiohttp
import pytest

from core.messages import participant_channel, room_key
from tests.signaling.conftest import Stack
from tests.signaling.fakes import FAKE_OFFER


async def test_join_places_the_room_through_the_orchestrator_once(stack: Stack) -> None:
    host = await stack.signaling()
    first, second = await stack.connect(host), await stack.connect(host)
    welcome = await first.hello(stack.keys.token(identity="alice"))
    assert welcome["room"] == "room-1" and welcome["v"] == 1 and welcome["resumed"] is False
    assert welcome["ice_servers"] == [{"urls": ["stun:127.0.0.1:3478"]}]
    assert welcome["you"] == {
        "identity": "alice",
        "name": "Alice",
        "role": "student",
        "permissions": sorted(welcome["you"]["permissions"]),
    }
    assert stack.orchestrator.requests == [{"op": "ensure_room", "room_id": "room-1", "region": "eu-central"}]
    second_welcome = await second.hello(stack.keys.token(identity="bob"))
    assert [p["identity"] for p in second_welcome["participants"]] == ["alice"]
    assert len(stack.orchestrator.requests) == 1  # the room map answered the second time
    join = stack.node.ops("join")[0]
    assert join["identity"] == "alice" and join["role"] == "student" and "moderate" not in join["permissions"]


async def test_a_class_in_progress_does_not_need_the_orchestrator(stack: Stack) -> None:
    await stack.open_bus().kv_set(room_key("room-1"), "node-a")
    await stack.orchestrator.stop()
    host = await stack.signaling()
    client = await stack.connect(host)
    await client.hello(stack.keys.token())
    assert stack.orchestrator.requests == []


async def test_no_placement_is_a_clear_error(stack: Stack) -> None:
    await stack.orchestrator.stop()
    host = await stack.signaling(request_timeout_s=0.5)
    client = await stack.connect(host)
    reply = await client.request({"type": "hello", "v": 1, "token": stack.keys.token()})
    assert reply["code"] == "placement_unavailable"
    await stack.orchestrator.start()
    stack.orchestrator.refuse = "no_capacity"
    reply = await client.request({"type": "hello", "v": 1, "token": stack.keys.token()})
    assert reply["code"] == "placement_unavailable" and "no_capacity" in reply["message"]
    stack.orchestrator.refuse = None
    await client.hello(stack.keys.token())  # the socket stayed usable


async def test_a_stale_room_map_entry_is_replaced_by_a_new_placement(stack: Stack) -> None:
    await stack.open_bus().kv_set(room_key("room-1"), "node-gone")
    host = await stack.signaling()
    client = await stack.connect(host)
    await client.hello(stack.keys.token())
    assert len(stack.orchestrator.requests) == 1
    assert await stack.open_bus().kv_get(room_key("room-1")) == "node-a"


async def test_node_errors_pass_through_with_their_code(stack: Stack) -> None:
    stack.node.capacity = 1
    host = await stack.signaling()
    first, second = await stack.connect(host), await stack.connect(host)
    await first.hello(stack.keys.token(identity="alice"))
    reply = await second.request({"type": "hello", "v": 1, "token": stack.keys.token(identity="bob")})
    assert reply["code"] == "room_full"
    assert host.service.health()["sessions"] == 1  # type: ignore[attr-defined]
    reply = await first.request({"type": "moderate", "action": "mute", "target": "p_nobody"})
    assert reply["code"] == "permission_denied"  # students cannot moderate, whatever the target


async def test_publish_relays_the_offer_and_returns_the_answer(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    welcome = await client.hello(stack.keys.token())
    sources = {"0": "microphone", "1": "camera"}
    reply = await client.request({"type": "publish", "sdp": FAKE_OFFER, "sources": sources})
    assert reply["type"] == "answer" and reply["sdp"].startswith("v=0")
    publish = stack.node.ops("publish")[0]
    assert publish == {
        "op": "publish",
        "participant_id": welcome["participant_id"],
        "sdp": FAKE_OFFER,
        "sources": sources,
    }


async def test_chat_is_relayed_and_the_node_sets_the_sender(stack: Stack) -> None:
    host = await stack.signaling()
    alice, bob = await stack.connect(host), await stack.connect(host)
    await alice.hello(stack.keys.token(identity="alice"))
    await bob.hello(stack.keys.token(identity="bob"))
    assert (await alice.request({"type": "chat", "text": "hi bob"}))["type"] == "ok"
    data = await bob.expect("data")
    assert data["from"]["identity"] == "alice" and data["body"] == {"text": "hi bob"}
    assert stack.node.ops("data")[0] == {
        "op": "data",
        "participant_id": stack.node.ops("join")[0]["participant_id"],
        "kind": "chat",
        "body": {"text": "hi bob"},
    }


async def test_questions_need_moderate_and_answers_reach_the_node_with_their_kind(stack: Stack) -> None:
    host = await stack.signaling()
    teacher, student = await stack.connect(host), await stack.connect(host)
    await teacher.hello(stack.keys.token(identity="tina", role="instructor"))
    await student.hello(stack.keys.token(identity="sam"))
    check = {"type": "poll", "poll_id": "q1", "question": "2+2?", "options": ["3", "4"], "correct": 1}
    assert (await student.request(check))["code"] == "permission_denied"
    assert (await teacher.request(check))["type"] == "ok"
    assert (await teacher.request({**check, "poll_id": "q2", "correct": None}))["type"] == "ok"
    assert (await student.request({"type": "answer", "poll_id": "q1", "choice": 1, "check": True}))["type"] == "ok"
    assert (await student.request({"type": "answer", "poll_id": "q2", "choice": 0}))["type"] == "ok"
    sent = [(d["kind"], d["body"]) for d in stack.node.ops("data")]
    assert sent == [
        ("check", {"poll_id": "q1", "question": "2+2?", "options": ["3", "4"], "correct": 1}),
        ("poll", {"poll_id": "q2", "question": "2+2?", "options": ["3", "4"]}),
        ("check_answer", {"poll_id": "q1", "choice": 1}),
        ("poll_answer", {"poll_id": "q2", "choice": 0}),
    ]


async def test_node_messages_are_forwarded_with_increasing_seq(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    welcome = await client.hello(stack.keys.token())
    channel = participant_channel(welcome["participant_id"])
    for i in range(5):
        await stack.open_bus().publish(
            channel, {"type": "speaking", "participant_id": "p_x", "speaking": True, "talk_time_ms": i}
        )
    seen = [await client.expect("speaking") for _ in range(5)]
    assert [m["talk_time_ms"] for m in seen] == [0, 1, 2, 3, 4]
    seqs = [m["seq"] for m in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


async def test_rooms_do_not_see_each_other(stack: Stack) -> None:
    host = await stack.signaling()
    a, b = await stack.connect(host), await stack.connect(host)
    await a.hello(stack.keys.token(room="room-a", identity="alice"))
    welcome_b = await b.hello(stack.keys.token(room="room-b", identity="bob"))
    assert welcome_b["participants"] == []
    assert (await a.request({"type": "chat", "text": "secret"}))["type"] == "ok"
    assert (await b.request({"type": "ping"}))["type"] == "pong"
    assert all(m["type"] != "data" for m in b.received)


async def test_pages_health_and_metrics(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    await client.hello(stack.keys.token())
    async with stack.http.get(f"{host.url}/") as resp:
        assert resp.status == 200 and "classmesh" in await resp.text()
    async with stack.http.get(f"{host.url}/room/room-1?token=abc") as resp:
        assert resp.status == 200
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert 'src="/classroom/classroom.js"' in await resp.text()
    async with stack.http.get(f"{host.url}/room/..%2Fsecret") as resp:
        assert resp.status == 404
    async with stack.http.get(f"{host.url}/classroom/classroom.js") as resp:
        assert resp.status == 200 and "RTCPeerConnection" in await resp.text()
    async with stack.http.get(f"{host.url}/healthz") as resp:
        body = await resp.json()
        assert body["connections"] == 1 and body["sessions"] == 1 and body["region"] == "eu-central"
    async with stack.http.get(f"{host.url}/metrics") as resp:
        text = await resp.text()
        for name in (
            "classmesh_signaling_connections",
            "classmesh_signaling_messages_total",
            "classmesh_signaling_errors_total",
            "classmesh_signaling_resumes_total",
        ):
            assert name in text
        assert 'classmesh_signaling_messages_total{type="hello"}' in text


async def test_drain_sends_clients_elsewhere_and_refuses_new_sessions(stack: Stack) -> None:
    old_host, new_host = await stack.signaling(), await stack.signaling()
    client = await stack.connect(old_host)
    welcome = await client.hello(stack.keys.token())
    await old_host.drain(time.monotonic() + 5)
    assert await client.closed() == 1012
    # a draining process takes no new sockets at all: the client's retry reaches another process
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await stack.connect(old_host)
    assert refused.value.status == 503
    # the session was kept, and resumes on the other process without leaving the room
    moved = await stack.connect(new_host)
    resumed = await moved.request({"type": "resume", "v": 1, "resume_token": welcome["resume_token"]})
    assert resumed["type"] == "welcome" and resumed["participant_id"] == welcome["participant_id"]
    assert stack.node.ops("leave") == [] and len(stack.node.ops("join")) == 1
