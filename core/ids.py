"""Typed identifiers. Ids are opaque strings with a readable prefix (``room_3f9a...``)."""

from __future__ import annotations

import re
import secrets
from typing import NewType

RoomId = NewType("RoomId", str)
ParticipantId = NewType("ParticipantId", str)
TrackId = NewType("TrackId", str)
NodeId = NewType("NodeId", str)
RegionName = NewType("RegionName", str)
SessionId = NewType("SessionId", str)
WorkerId = NewType("WorkerId", str)

# What an id supplied from outside (a token, an API call, a CLI flag) may look like: short, printable, no
# separators that would confuse bus channel names or URLs.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def new_id(prefix: str) -> str:
    """A new random id such as ``room_k3j9x0c2m1q8``."""
    return f"{prefix}_{secrets.token_hex(8)}"


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string usable as an id (1-128 chars of [A-Za-z0-9_.-], not starting with a
    separator)."""
    return isinstance(value, str) and _ID_RE.match(value) is not None
