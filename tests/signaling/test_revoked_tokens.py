"""A join link the orchestrator revoked (its instructor was replaced) no longer lets anyone in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

from orchestrator.join_revocations import JoinLinkRevocations
from orchestrator.store.models import JoinLink, SessionId
from signaling.errors import CLOSE_AUTH_FAILED
from tests.signaling.conftest import Stack
from tests.signaling.test_auth import refused_hello


def _link(token: str) -> JoinLink:
    jti = str(jwt.decode(token, options={"verify_signature": False})["jti"])
    now = datetime.now(UTC)
    return JoinLink(jti, SessionId("room-1"), "ana", "instructor", now + timedelta(hours=2), now)


async def test_a_revoked_instructor_token_is_refused_and_others_still_join(stack: Stack) -> None:
    revoked = stack.keys.token(identity="ana", role="instructor")
    kept = stack.keys.token(identity="s1", role="student")
    await JoinLinkRevocations(stack.open_bus())([_link(revoked)])
    reply, code = await refused_hello(stack, revoked)
    assert reply["code"] == "token_revoked" and code == CLOSE_AUTH_FAILED, reply
    assert stack.node.requests == []  # refused before anything reached the node
    client = await stack.connect(stack.hosts[0])
    welcome = await client.hello(kept)
    assert welcome["room"] == "room-1"
