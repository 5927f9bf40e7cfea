"""The v1 signaling protocol: JSON objects over one WebSocket, each with a ``type``.

Client -> server messages are parsed by ``parse_client_message`` into frozen dataclasses; anything else is
refused with a ``ProtocolError`` whose code says why (``bad_json``, ``bad_message``, ``unknown_type``,
``too_large``, ``unsupported_version``). Unknown fields are refused too: v1 is strict so that a typo never
passes silently. Every client message may carry ``id`` (a string of at most 64 characters or an integer),
echoed in the reply (``ok``, ``answer``, ``pong``, ``error``).

Server -> client messages are built by the functions at the bottom. docs/signaling.md documents them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.ids import is_valid_id
from signaling.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
MAX_SDP_BYTES = 32 * 1024
MAX_CHAT_CHARS = 2000
MAX_EMOJI_CHARS = 16
MAX_ID_CHARS = 64
MAX_TOKEN_CHARS = 4096
MAX_SOURCES = 16
MAX_QUESTION_CHARS = 500
MAX_OPTION_CHARS = 200
MAX_OPTIONS = 8
SOURCES = frozenset({"camera", "microphone", "screen"})
MODERATE_ACTIONS = frozenset({"mute", "remove"})

RequestId = str | int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientMessage:
    """Base of client messages: ``id`` is the client's request id, echoed in the reply."""

    id: RequestId = None
    TYPE = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(ClientMessage):
    v: int
    token: str
    room: str | None = None
    TYPE = "hello"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(ClientMessage):
    v: int
    resume_token: str
    last_seq: int = 0
    TYPE = "resume"


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish(ClientMessage):
    sdp: str
    sources: dict[str, str] = field(default_factory=dict)
    TYPE = "publish"


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberAnswer(ClientMessage):
    sdp: str
    TYPE = "subscriber_answer"


@dataclass(frozen=True, slots=True, kw_only=True)
class Mute(ClientMessage):
    source: str
    muted: bool
    TYPE = "mute"


@dataclass(frozen=True, slots=True, kw_only=True)
class Chat(ClientMessage):
    text: str
    TYPE = "chat"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hand(ClientMessage):
    raised: bool
    TYPE = "hand"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reaction(ClientMessage):
    emoji: str
    TYPE = "reaction"


@dataclass(frozen=True, slots=True, kw_only=True)
class Poll(ClientMessage):
    """An instructor asks the room a question with options; with ``correct`` (the right option's index) it is a
    comprehension check, and the index is kept from the students."""

    poll_id: str
    question: str
    options: list[str]
    correct: int | None = None
    TYPE = "poll"

    def __post_init__(self) -> None:
        if self.correct is not None and self.correct >= len(self.options):
            raise _bad(f"correct must be the index of one of the {len(self.options)} options")


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer(ClientMessage):
    """A participant's choice in a poll or check (``check`` says which, as the question said)."""

    poll_id: str
    choice: int
    check: bool = False
    TYPE = "answer"


@dataclass(frozen=True, slots=True, kw_only=True)
class Moderate(ClientMessage):
    action: str
    target: str
    source: str | None = None
    TYPE = "moderate"


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave(ClientMessage):
    TYPE = "leave"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(ClientMessage):
    TYPE = "ping"


# --------------------------------------------------------------------------------------- field validators

Validator = Callable[[str, Any], Any]


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, code="bad_message")


def _string(max_chars: int, *, non_empty: bool = True) -> Validator:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _bad(f"{name} must be a string")
        if non_empty and not value.strip():
            raise _bad(f"{name} must not be empty")
        if len(value) > max_chars:
            raise ProtocolError(f"{name} is longer than {max_chars} characters", code="too_large")
        return value

    return check


def _sdp(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string")
    if len(value.encode()) > MAX_SDP_BYTES:
        raise ProtocolError(f"{name} is larger than {MAX_SDP_BYTES} bytes", code="too_large")
    if not value.startswith("v=0"):
        raise _bad(f"{name} is not an SDP description (must start with v=0)")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{name} must be true or false")
    return value


def _int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"{name} must be a non-negative integer")
    return value


def _options(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_OPTIONS:
        raise _bad(f"{name} must be a list of 2 to {MAX_OPTIONS} options")
    check = _string(MAX_OPTION_CHARS)
    return [check(f"{name}[{i}]", option) for i, option in enumerate(value)]


def _version(name: str, value: Any) -> int:
    if value != PROTOCOL_VERSION or isinstance(value, bool):
        raise ProtocolError(
            f"protocol version {value!r} is not supported; this server speaks v{PROTOCOL_VERSION}",
            code="unsupported_version",
        )
    return PROTOCOL_VERSION


def _ident(name: str, value: Any) -> str:
    if not is_valid_id(value):
        raise _bad(f"{name} must be an id (1-128 characters of A-Z a-z 0-9 _ . -)")
    return str(value)


def _source(name: str, value: Any) -> str:
    if value not in SOURCES:
        raise _bad(f"{name} must be one of {', '.join(sorted(SOURCES))}")
    return str(value)


def _action(name: str, value: Any) -> str:
    if value not in MODERATE_ACTIONS:
        raise _bad(f"{name} must be one of {', '.join(sorted(MODERATE_ACTIONS))}")
    return str(value)


def _sources(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _bad(f"{name} must be an object mapping mid to camera|microphone|screen")
    if len(value) > MAX_SOURCES:
        raise ProtocolError(f"{name} has more than {MAX_SOURCES} entries", code="too_large")
    out: dict[str, str] = {}
    for mid, source in value.items():
        if not mid or len(mid) > 32:
            raise _bad(f"{name}: mid {mid[:40]!r} must be 1-32 characters")
        out[mid] = _source(f"{name}[{mid}]", source)
    return out


# type -> (class, {field: (validator, required)})
_SCHEMAS: dict[str, tuple[type[ClientMessage], dict[str, tuple[Validator, bool]]]] = {
    "hello": (
        Hello,
        {"v": (_version, True), "token": (_string(MAX_TOKEN_CHARS), True), "room": (_ident, False)},
    ),
    "resume": (
        Resume,
        {"v": (_version, True), "resume_token": (_string(128), True), "last_seq": (_int, False)},
    ),
    "publish": (Publish, {"sdp": (_sdp, True), "sources": (_sources, True)}),
    "subscriber_answer": (SubscriberAnswer, {"sdp": (_sdp, True)}),
    "mute": (Mute, {"source": (_source, True), "muted": (_bool, True)}),
    "chat": (Chat, {"text": (_string(MAX_CHAT_CHARS), True)}),
    "hand": (Hand, {"raised": (_bool, True)}),
    "reaction": (Reaction, {"emoji": (_string(MAX_EMOJI_CHARS), True)}),
    "poll": (
        Poll,
        {
            "poll_id": (_ident, True),
            "question": (_string(MAX_QUESTION_CHARS), True),
            "options": (_options, True),
            "correct": (_int, False),
        },
    ),
    "answer": (Answer, {"poll_id": (_ident, True), "choice": (_int, True), "check": (_bool, False)}),
    "moderate": (
        Moderate,
        {"action": (_action, True), "target": (_ident, True), "source": (_source, False)},
    ),
    "leave": (Leave, {}),
    "ping": (Ping, {}),
}
CLIENT_TYPES = frozenset(_SCHEMAS)


def _request_id(value: Any) -> RequestId:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _bad("id must be a string or an integer")
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise _bad(f"id is longer than {MAX_ID_CHARS} characters")
    if isinstance(value, int) and abs(value) > 2**53:
        raise _bad("id is out of range")
    return value


def peek_request_id(obj: object) -> RequestId:
    """The ``id`` of a frame that failed validation, when it has a usable one (for the error reply)."""
    if isinstance(obj, Mapping):
        try:
            return _request_id(obj.get("id"))
        except ProtocolError:
            return None
    return None


def decode_frame(raw: str) -> dict[str, Any]:
    """A text frame -> a JSON object; ``too_large`` / ``bad_json`` / ``bad_message`` otherwise."""
    if len(raw) > MAX_FRAME_BYTES or len(raw.encode()) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame is larger than {MAX_FRAME_BYTES} bytes", code="too_large")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("frame is not valid JSON", code="bad_json") from None
    if not isinstance(obj, dict):
        raise _bad("a message must be a JSON object")
    return obj


def parse_message(obj: Mapping[str, Any]) -> ClientMessage:
    """A decoded JSON object -> its message; ``unknown_type`` / ``bad_message`` / ... otherwise."""
    type_name = obj.get("type")
    if not isinstance(type_name, str):
        raise _bad("a message needs a string field 'type'")
    schema = _SCHEMAS.get(type_name)
    if schema is None:
        raise ProtocolError(f"unknown message type {type_name[:40]!r}", code="unknown_type")
    cls, fields = schema
    unknown = set(obj) - set(fields) - {"type", "id"}
    if unknown:
        names = ", ".join(sorted(str(n)[:40] for n in unknown)[:5])
        raise _bad(f"{type_name}: unknown field(s) {names}")
    values: dict[str, Any] = {"id": _request_id(obj.get("id"))}
    for name, (check, required) in fields.items():
        if name not in obj or obj[name] is None:
            if required:
                raise _bad(f"{type_name}: missing field {name!r}")
            continue
        values[name] = check(name, obj[name])
    return cls(**values)


def parse_client_message(raw: str) -> ClientMessage:
    """A text frame -> a validated client message (raises ``ProtocolError``)."""
    return parse_message(decode_frame(raw))


# ------------------------------------------------------------------------------------- server messages


def _with_id(body: dict[str, Any], request_id: RequestId) -> dict[str, Any]:
    if request_id is not None:
        body["id"] = request_id
    return body


def error_message(code: str, message: str, request_id: RequestId = None) -> dict[str, Any]:
    return _with_id({"type": "error", "code": code, "message": message}, request_id)


def ok_message(request_id: RequestId) -> dict[str, Any]:
    return _with_id({"type": "ok"}, request_id)


def answer_message(sdp: str, request_id: RequestId) -> dict[str, Any]:
    return _with_id({"type": "answer", "sdp": sdp}, request_id)


def pong_message(request_id: RequestId) -> dict[str, Any]:
    return _with_id({"type": "pong"}, request_id)


def welcome_message(
    *,
    participant_id: str,
    resume_token: str,
    room: str,
    you: Mapping[str, Any],
    participants: list[Any],
    ice_servers: list[Any],
    resumed: bool,
    seq: int,
    request_id: RequestId,
) -> dict[str, Any]:
    body = {
        "type": "welcome",
        "v": PROTOCOL_VERSION,
        "participant_id": participant_id,
        "resume_token": resume_token,
        "room": room,
        "you": dict(you),
        "participants": participants,
        "ice_servers": ice_servers,
        "resumed": resumed,
        "seq": seq,
    }
    return _with_id(body, request_id)
