"""Join tokens and role rules, enforced by signaling before anything reaches the node."""

from __future__ import annotations

import time

from core.tokens import Permission, Role
from signaling.errors import CLOSE_AUTH_FAILED
from tests.signaling.conftest import Stack
from tests.signaling.fakes import FAKE_OFFER


async def refused_hello(stack: Stack, token: str, **extra: object) -> tuple[dict[str, object], int | None]:
    host = stack.hosts[0] if stack.hosts else await stack.signaling()
    client = await stack.connect(host)
    reply = await client.request({"type": "hello", "v": 1, "token": token, **extra})
    return reply, await client.closed()


async def test_forged_token_is_refused_and_the_socket_closed_4401(stack: Stack) -> None:
    forged = stack.keys.other_issuer.mint(room="room-1", identity="mallory", name="M", role="instructor")
    reply, code = await refused_hello(stack, forged)
    assert reply["code"] == "token_invalid"
    assert code == CLOSE_AUTH_FAILED
    assert stack.node.requests == [] and stack.orchestrator.requests == []


async def test_tampered_token_is_refused(stack: Stack) -> None:
    token = stack.keys.token(role="student")
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload[:-2]}AA.{signature}"
    reply, code = await refused_hello(stack, tampered)
    assert reply["code"] == "token_invalid" and code == CLOSE_AUTH_FAILED


async def test_expired_token_is_refused(stack: Stack) -> None:
    token = stack.keys.token(ttl_s=60, now=time.time() - 3600)
    reply, code = await refused_hello(stack, token)
    assert reply["code"] == "token_expired" and code == CLOSE_AUTH_FAILED


async def test_token_for_another_room_is_refused(stack: Stack) -> None:
    reply, code = await refused_hello(stack, stack.keys.token(room="room-1"), room="room-2")
    assert reply["code"] == "token_wrong_room" and code == CLOSE_AUTH_FAILED
    assert stack.node.requests == []


async def test_role_holding_too_much_is_refused(stack: Stack) -> None:
    token = stack.keys.token(role=Role.STUDENT, permissions=frozenset({Permission.MODERATE}))
    reply, code = await refused_hello(stack, token)
    assert reply["code"] == "token_role_mismatch" and code == CLOSE_AUTH_FAILED


async def test_student_cannot_moderate(stack: Stack) -> None:
    host = await stack.signaling()
    teacher, student = await stack.connect(host), await stack.connect(host)
    t = await teacher.hello(stack.keys.token(identity="tina", role="instructor"))
    await student.hello(stack.keys.token(identity="sam", role="student"))
    reply = await student.request({"type": "moderate", "action": "remove", "target": t["participant_id"]})
    assert reply["code"] == "permission_denied"
    assert stack.node.ops("moderate") == []
    assert (await teacher.request({"type": "ping"}))["type"] == "pong"  # the teacher is still there


async def test_instructor_can_remove_a_student(stack: Stack) -> None:
    host = await stack.signaling()
    teacher, student = await stack.connect(host), await stack.connect(host)
    await teacher.hello(stack.keys.token(identity="tina", role="instructor"))
    s = await student.hello(stack.keys.token(identity="sam", role="student"))
    reply = await teacher.request({"type": "moderate", "action": "remove", "target": s["participant_id"]})
    assert reply["type"] == "ok"
    assert (await student.expect("removed"))["reason"]
    assert await student.closed() == 4403
    # the session is gone: nothing left to resume
    client = await stack.connect(host)
    assert (await client.request({"type": "resume", "v": 1, "resume_token": s["resume_token"]}))[
        "code"
    ] == "session_expired"


async def test_observer_cannot_publish_but_may_chat(stack: Stack) -> None:
    host = await stack.signaling()
    observer = await stack.connect(host)
    welcome = await observer.hello(stack.keys.token(identity="olga", role="observer"))
    assert "publish_video" not in welcome["you"]["permissions"]
    for sources in ({"0": "camera"}, {"0": "microphone"}, {"0": "screen"}):
        reply = await observer.request({"type": "publish", "sdp": FAKE_OFFER, "sources": sources})
        assert reply["code"] == "permission_denied", sources
    reply = await observer.request({"type": "mute", "source": "microphone", "muted": False})
    assert reply["code"] == "permission_denied"
    assert stack.node.ops("publish") == [] and stack.node.ops("mute") == []
    assert (await observer.request({"type": "chat", "text": "hello from the back"}))["type"] == "ok"


async def test_recorder_subscribes_only(stack: Stack) -> None:
    host = await stack.signaling()
    recorder = await stack.connect(host)
    await recorder.hello(stack.keys.token(identity="rec-1", role="recorder"))
    assert (await recorder.request({"type": "chat", "text": "x"}))["code"] == "permission_denied"
    assert (await recorder.request({"type": "hand", "raised": True}))["code"] == "permission_denied"
    reply = await recorder.request({"type": "publish", "sdp": FAKE_OFFER, "sources": {"0": "camera"}})
    assert reply["code"] == "permission_denied"
    assert (await recorder.request({"type": "subscriber_answer", "sdp": FAKE_OFFER}))["type"] == "ok"


async def test_student_with_only_audio_cannot_publish_camera(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    token = stack.keys.token(permissions=frozenset({Permission.PUBLISH_AUDIO, Permission.SUBSCRIBE}))
    await client.hello(token)
    sources = {"0": "microphone", "1": "camera"}
    assert (await client.request({"type": "publish", "sdp": FAKE_OFFER, "sources": sources}))[
        "code"
    ] == "permission_denied"
    reply = await client.request({"type": "publish", "sdp": FAKE_OFFER, "sources": {"0": "microphone"}})
    assert reply["type"] == "answer" and reply["sdp"].startswith("v=0")


async def test_token_for_a_room_that_is_not_an_id_is_refused(stack: Stack) -> None:
    reply, code = await refused_hello(stack, stack.keys.token(room="a/b c"))
    assert reply["code"] == "token_invalid" and code == CLOSE_AUTH_FAILED
    assert stack.node.requests == [] and stack.orchestrator.requests == []
