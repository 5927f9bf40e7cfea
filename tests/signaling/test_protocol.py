"""The v1 protocol: every refusal has its specific code, and a refused frame changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from signaling.errors import ProtocolError
from signaling.protocol import (
    MAX_CHAT_CHARS,
    MAX_FRAME_BYTES,
    MAX_SDP_BYTES,
    Answer,
    Chat,
    Hello,
    Moderate,
    Poll,
    Publish,
    parse_client_message,
)
from tests.signaling.conftest import Stack
from tests.signaling.fakes import FAKE_OFFER

SDP = FAKE_OFFER


def code_of(raw: str) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw)
    return info.value.code


def test_valid_messages_parse_into_their_classes() -> None:
    hello = parse_client_message(json.dumps({"type": "hello", "v": 1, "token": "t", "room": "r1", "id": 7}))
    assert hello == Hello(v=1, token="t", room="r1", id=7)
    publish = parse_client_message(json.dumps({"type": "publish", "sdp": SDP, "sources": {"0": "camera"}}))
    assert isinstance(publish, Publish) and publish.sources == {"0": "camera"}
    assert parse_client_message('{"type":"chat","text":"hi"}') == Chat(text="hi")
    moderate = parse_client_message('{"type":"moderate","action":"remove","target":"p_1"}')
    assert moderate == Moderate(action="remove", target="p_1")
    poll = parse_client_message('{"type":"poll","poll_id":"q1","question":"2+2?","options":["3","4"],"correct":1}')
    assert poll == Poll(poll_id="q1", question="2+2?", options=["3", "4"], correct=1)
    assert parse_client_message('{"type":"answer","poll_id":"q1","choice":0}') == Answer(poll_id="q1", choice=0)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_json"),
        ("{", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"hello"', "bad_message"),
        ("{}", "bad_message"),
        ('{"type": 3}', "bad_message"),
        ('{"type": "launch_rockets"}', "unknown_type"),
        ('{"type": "hello", "v": 1}', "bad_message"),
        ('{"type": "hello", "v": 2, "token": "t"}', "unsupported_version"),
        ('{"type": "hello", "v": true, "token": "t"}', "unsupported_version"),
        ('{"type": "hello", "v": 1, "token": 5}', "bad_message"),
        ('{"type": "hello", "v": 1, "token": "t", "room": "../etc"}', "bad_message"),
        ('{"type": "hello", "v": 1, "token": "t", "admin": true}', "bad_message"),
        ('{"type": "resume", "v": 1, "resume_token": "x", "last_seq": -1}', "bad_message"),
        ('{"type": "publish", "sdp": "hello", "sources": {}}', "bad_message"),
        ('{"type": "publish", "sdp": "v=0", "sources": {"0": "tv"}}', "bad_message"),
        ('{"type": "publish", "sdp": "v=0", "sources": []}', "bad_message"),
        ('{"type": "mute", "source": "camera", "muted": "yes"}', "bad_message"),
        ('{"type": "chat", "text": "   "}', "bad_message"),
        ('{"type": "hand"}', "bad_message"),
        ('{"type": "moderate", "action": "ban", "target": "p_1"}', "bad_message"),
        ('{"type": "poll", "poll_id": "q1", "question": "?", "options": ["only one"]}', "bad_message"),
        ('{"type": "poll", "poll_id": "q1", "question": "?", "options": ["a", "b"], "correct": 2}', "bad_message"),
        ('{"type": "poll", "poll_id": "q1", "question": "?", "options": ["a", ""]}', "bad_message"),
        ('{"type": "poll", "poll_id": "q 1", "question": "?", "options": ["a", "b"]}', "bad_message"),
        (
            json.dumps({"type": "poll", "poll_id": "q1", "question": "?", "options": list("abcdefghi")}),
            "bad_message",
        ),
        ('{"type": "answer", "poll_id": "q1", "choice": -1}', "bad_message"),
        ('{"type": "answer", "poll_id": "q1", "choice": "a"}', "bad_message"),
        ('{"type": "ping", "id": {"a": 1}}', "bad_message"),
        ('{"type": "ping", "id": true}', "bad_message"),
    ],
)
def test_refusals_have_specific_codes(raw: str, code: str) -> None:
    assert code_of(raw) == code


def test_size_limits() -> None:
    assert code_of(json.dumps({"type": "chat", "text": "x" * (MAX_CHAT_CHARS + 1)})) == "too_large"
    assert parse_client_message(json.dumps({"type": "chat", "text": "x" * MAX_CHAT_CHARS}))
    big_sdp = "v=0\r\n" + "a=x\r\n" * (MAX_SDP_BYTES // 5)
    assert code_of(json.dumps({"type": "subscriber_answer", "sdp": big_sdp})) == "too_large"
    assert code_of(json.dumps({"type": "ping", "pad": "x" * MAX_FRAME_BYTES})) == "too_large"
    sources = {str(i): "camera" for i in range(17)}
    assert code_of(json.dumps({"type": "publish", "sdp": SDP, "sources": sources})) == "too_large"


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    assert code_of("[" * 30_000 + "]" * 30_000) in ("bad_json", "bad_message")


# --------------------------------------------------------------------------------- over a real socket

WIRE_CASES: list[tuple[Any, str]] = [
    ("nonsense", "bad_json"),
    ([], "bad_message"),
    ({"type": "unknown"}, "unknown_type"),
    ({"type": "chat", "text": "x" * 5000}, "too_large"),
    ({"type": "ping", "pad": "y" * (MAX_FRAME_BYTES + 10)}, "too_large"),
    ({"type": "hello", "v": 9, "token": "t"}, "unsupported_version"),
]


async def test_every_error_keeps_the_socket_open_and_changes_nothing(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    for body, code in WIRE_CASES:
        await client.send(body if isinstance(body, str) else json.dumps(body))
        reply = await client.expect("error")
        assert reply["code"] == code, (body, reply)
        assert reply["message"]
    # nothing happened on the node, and the socket still answers
    assert stack.node.requests == []
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    # binary frames are refused too
    await client.ws.send_bytes(b"\x00\x01")
    assert (await client.expect("error"))["code"] == "bad_message"
    # and the session can still start
    await client.hello(stack.keys.token())


async def test_error_echoes_the_request_id(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    reply = await client.request({"type": "chat", "text": "hi"})
    assert reply == {"type": "error", "code": "out_of_order", "message": reply["message"], "id": reply["id"]}


async def test_anything_but_hello_before_welcome_is_out_of_order(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    for msg in (
        {"type": "publish", "sdp": SDP, "sources": {"0": "camera"}},
        {"type": "subscriber_answer", "sdp": SDP},
        {"type": "mute", "source": "camera", "muted": True},
        {"type": "chat", "text": "hi"},
        {"type": "hand", "raised": True},
        {"type": "reaction", "emoji": "+1"},
        {"type": "moderate", "action": "mute", "target": "p_1"},
        {"type": "leave"},
    ):
        reply = await client.request(msg)
        assert reply["code"] == "out_of_order", msg
    assert stack.node.requests == []


async def test_second_hello_is_out_of_order_and_does_not_join_again(stack: Stack) -> None:
    host = await stack.signaling()
    client = await stack.connect(host)
    welcome = await client.hello(stack.keys.token())
    reply = await client.request({"type": "hello", "v": 1, "token": stack.keys.token()})
    assert reply["code"] == "out_of_order"
    reply = await client.request({"type": "resume", "v": 1, "resume_token": welcome["resume_token"]})
    assert reply["code"] == "out_of_order"
    assert len(stack.node.ops("join")) == 1
