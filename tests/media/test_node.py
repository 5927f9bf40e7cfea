"""The media node as a service: its bus contract, presence events, TURN credentials, refusals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from classmesh.client import ClassroomClient, SignalingError
from core.bus import LocalBus, RemoteError
from core.messages import EVENTS_STREAM, decode, node_rpc
from core.service import ServiceHost
from media.node import MediaNode, MediaNodeConfig, subscriber_tracks, turn_credentials
from tests.media.peers import ToneTrack


def test_turn_credentials_follow_coturns_rest_scheme() -> None:
    username, password = turn_credentials("s3cret", "alice", ttl_s=3600, now=1_700_000_000)
    assert username == "1700003600:alice"
    expected = base64.b64encode(hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()).decode()
    assert password == expected


def test_subscriber_tracks_reads_the_msid_labels() -> None:
    sdp = (
        "v=0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\na=msid:p_alice microphone:t1\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:1\r\na=sendonly\r\na=msid:p_alice camera:t2\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:2\r\na=inactive\r\na=msid:p_bob camera:t3\r\n"
    )
    assert subscriber_tracks(sdp) == {
        "0": {"participant_id": "p_alice", "source": "microphone", "kind": "audio"},
        "1": {"participant_id": "p_alice", "source": "camera", "kind": "video"},
    }


async def test_presence_and_talk_events_reach_the_event_stream(stack: Any) -> None:
    bus = stack.bus
    await bus.ensure_group(EVENTS_STREAM, "probe")
    token = stack.issuer.mint(room="ev", identity="alice", name="Alice", role="student")
    client = ClassroomClient(stack.signaling_url, token, room="ev")
    try:
        await client.connect()
        await client.publish([("camera", VideoStreamTrack()), ("microphone", AudioStreamTrack())])
        await client.chat("question 3?")
        events: list[Any] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = await bus.read_group(EVENTS_STREAM, "probe", "c", block_ms=200)
            events += [decode(d.payload) for d in batch if d.payload.get("room_id") == "ev"]
            kinds = [e.event for e in events]
            if "joined" in kinds and kinds.count("published") == 2 and "data" in kinds:
                break
        kinds = [e.event for e in events]
        assert kinds[0] == "joined" and kinds.count("published") == 2 and "data" in kinds
        assert all(e.identity == "alice" and e.role == "student" and e.node_id for e in events)
        chat = next(e for e in events if e.event == "data")
        assert chat.details == {"kind": "chat", "body": {"text": "question 3?"}}
        await client.leave()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "left" not in kinds:
            batch = await bus.read_group(EVENTS_STREAM, "probe", "c", block_ms=200)
            kinds += [decode(d.payload).event for d in batch if d.payload.get("room_id") == "ev"]
        assert "left" in kinds
    finally:
        await client.close()


async def test_a_checks_answer_stays_with_the_instructor_and_the_event_stream(stack: Any) -> None:
    """The room sees a comprehension check without its right option; each answer reaches the instructor only;
    the event stream gets both whole (for engagement)."""
    bus = stack.bus
    await bus.ensure_group(EVENTS_STREAM, "probe")

    def client(identity: str, role: str) -> ClassroomClient:
        token = stack.issuer.mint(room="quiz", identity=identity, name=identity.title(), role=role)
        return ClassroomClient(stack.signaling_url, token, room="quiz")

    teacher, sam, ria = client("tina", "instructor"), client("sam", "student"), client("ria", "student")
    try:
        for c in (teacher, sam, ria):
            await c.connect()
        check = {"type": "poll", "poll_id": "q1", "question": "2+2?", "options": ["3", "4"], "correct": 1}
        with pytest.raises(SignalingError, match="permission_denied"):
            await sam.request(check)
        assert (await teacher.request(check))["type"] == "ok"
        assert (await sam.request({"type": "answer", "poll_id": "q1", "choice": 1, "check": True}))["type"] == "ok"

        def data(c: ClassroomClient, kind: str) -> list[dict[str, Any]]:
            return [m for m in c.messages if m.get("type") == "data" and m.get("kind") == kind]

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if data(teacher, "check_answer") and data(ria, "check"):
                break
            await asyncio.sleep(0.05)
        for c in (sam, ria):
            (seen,) = data(c, "check")
            assert seen["body"] == {"poll_id": "q1", "question": "2+2?", "options": ["3", "4"]}  # no "correct"
        (answer,) = data(teacher, "check_answer")
        assert answer["from"]["identity"] == "sam" and answer["body"] == {"poll_id": "q1", "choice": 1}
        await asyncio.sleep(0.3)
        assert not data(ria, "check_answer") and not data(sam, "check_answer")  # students do not see answers

        details: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(details) < 2:
            batch = await bus.read_group(EVENTS_STREAM, "probe", "c", block_ms=200)
            details += [
                decode(d.payload).details
                for d in batch
                if d.payload.get("room_id") == "quiz" and d.payload.get("event") == "data"
            ]
        assert details == [
            {"kind": "check", "body": {"poll_id": "q1", "question": "2+2?", "options": ["3", "4"], "correct": 1}},
            {"kind": "check_answer", "body": {"poll_id": "q1", "choice": 1}},
        ]
    finally:
        for c in (teacher, sam, ria):
            await c.close()


async def test_a_stretch_of_speech_cut_short_by_leaving_is_still_reported(stack: Any) -> None:
    bus = stack.bus
    await bus.ensure_group(EVENTS_STREAM, "probe")
    token = stack.issuer.mint(room="talk", identity="tom", name="Tom", role="student")
    client = ClassroomClient(stack.signaling_url, token, room="talk")
    tone = ToneTrack()
    events: list[Any] = []

    async def until(event: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and event not in [e.event for e in events]:
            batch = await bus.read_group(EVENTS_STREAM, "probe", "c", block_ms=200)
            events.extend(decode(d.payload) for d in batch if d.payload.get("room_id") == "talk")

    try:
        await client.connect()
        await client.publish([("microphone", tone)])
        tone.loud = True
        await until("speaking_started")
        await asyncio.sleep(1.0)
        await client.leave()  # still talking
        await until("left")
    finally:
        await client.close()
    kinds = [e.event for e in events]
    assert "speaking_stopped" in kinds and kinds.index("speaking_stopped") < kinds.index("left"), kinds
    stopped = next(e for e in events if e.event == "speaking_stopped")
    assert 800 <= stopped.details["segment_ms"] <= 5000, stopped.details


_RECORDER_JOIN = {
    "op": "join",
    "room_id": "r",
    "participant_id": "rec",
    "identity": "recorder:a",
    "name": "recorder",
    "role": "recorder",
    "permissions": ["subscribe"],
}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"op": "teleport"}, "bad_request"),
        ({}, "bad_request"),
        ({"op": "join", "room_id": "bad room", "participant_id": "p1"}, "bad_request"),
        (
            {"op": "join", "room_id": "r", "participant_id": "p1", "identity": "x", "name": "x", "role": "admin"},
            "bad_request",
        ),
        (
            {
                "op": "join",
                "room_id": "r",
                "participant_id": "p1",
                "identity": "x",
                "name": "x",
                "role": "student",
                "permissions": ["fly"],
            },
            "bad_request",
        ),
        *[
            ({**_RECORDER_JOIN, "transport": transport, **extra}, code)
            for transport, extra, code in [
                ({"type": "plain", "host": "127.0.0.1", "port": 5000}, {"role": "student"}, "permission_denied"),
                ({"type": "plain", "host": "example.org", "port": 5000}, {}, "bad_request"),
                ({"type": "plain", "host": "0.0.0.0", "port": 5000}, {}, "bad_request"),
                ({"type": "plain", "host": "127.0.0.1", "port": 70000}, {}, "bad_request"),
                ({"type": "plain", "host": "127.0.0.1", "port": True}, {}, "bad_request"),
                ({"type": "srt"}, {}, "bad_request"),
                ("plain", {}, "bad_request"),
            ]
        ],
        ({"op": "publish", "participant_id": "nobody", "sdp": "v=0"}, "unknown_participant"),
        ({"op": "create_room", "room_id": "r", "max_participants": -1}, "bad_request"),
        ({"op": "state", "participant_id": 5}, "bad_request"),
    ],
)
async def test_node_refuses_bad_requests_with_a_code(payload: dict[str, Any], code: str) -> None:
    bus = LocalBus()
    node = MediaNode(MediaNodeConfig(node_id="n1", region="eu-central", public_url="http://127.0.0.1"), bus)
    host = ServiceHost(node, "127.0.0.1", 0)
    await host.start()
    try:
        with pytest.raises(RemoteError) as err:
            await bus.request(node_rpc("n1"), payload, timeout=3)
        assert err.value.code == code
        assert "r" not in node.rooms  # and nothing changed
    finally:
        await host.close()
        await bus.close()


async def test_room_full_reaches_the_client_as_an_error(stack: Any) -> None:
    await stack.bus.request(
        node_rpc("eu-central-1"), {"op": "create_room", "room_id": "tiny", "max_participants": 1}, timeout=3
    )
    from core.messages import room_key

    await stack.bus.kv_set(room_key("tiny"), "eu-central-1")
    first = ClassroomClient(
        stack.signaling_url, stack.issuer.mint(room="tiny", identity="a", name="A", role="student"), room="tiny"
    )
    second = ClassroomClient(
        stack.signaling_url, stack.issuer.mint(room="tiny", identity="b", name="B", role="student"), room="tiny"
    )
    try:
        await first.connect()
        with pytest.raises(Exception) as err:
            await second.connect()
        assert getattr(err.value, "code", "") == "room_full"
    finally:
        await first.close()
        await second.close()
        await asyncio.sleep(0)
