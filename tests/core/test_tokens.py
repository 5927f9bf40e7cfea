from __future__ import annotations

import time

import jwt
import pytest

from core.tokens import (
    Permission,
    Role,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    generate_private_key,
    parse_duration,
    private_key_pem,
    public_key_pem,
)


@pytest.fixture
def keys() -> tuple[TokenIssuer, TokenVerifier]:
    key = generate_private_key()
    return TokenIssuer(private_key_pem(key)), TokenVerifier(public_key_pem(key))


def test_round_trip_carries_role_permissions(keys: tuple[TokenIssuer, TokenVerifier]) -> None:
    issuer, verifier = keys
    token = issuer.mint(room="r1", identity="alice", name="Alice", role="student", region="eu-central")
    grant = verifier.verify(token, room="r1")
    assert (grant.room, grant.identity, grant.name, grant.role) == ("r1", "alice", "Alice", Role.STUDENT)
    assert grant.can(Permission.PUBLISH_VIDEO) and not grant.can(Permission.MODERATE)
    assert grant.region == "eu-central" and not grant.hidden
    recorder = verifier.verify(issuer.mint(room="r1", identity="rec", name="rec", role="recorder"))
    assert recorder.hidden and recorder.permissions == {Permission.SUBSCRIBE}


def test_forged_token_is_refused(keys: tuple[TokenIssuer, TokenVerifier]) -> None:
    _, verifier = keys
    other = TokenIssuer(private_key_pem(generate_private_key()))
    with pytest.raises(TokenError) as err:
        verifier.verify(other.mint(room="r1", identity="mallory", name="M", role="instructor"))
    assert err.value.code == "token_invalid"


def test_unsigned_and_garbage_tokens_are_refused(keys: tuple[TokenIssuer, TokenVerifier]) -> None:
    _, verifier = keys
    unsigned = jwt.encode(
        {"room": "r1", "sub": "x", "role": "instructor", "exp": time.time() + 60}, key=None, algorithm="none"
    )
    for token in (unsigned, "not.a.jwt", "", None, 42, "x" * 5000):
        with pytest.raises(TokenError) as err:
            verifier.verify(token)
        assert err.value.code == "token_invalid"


def test_expired_token_is_refused(keys: tuple[TokenIssuer, TokenVerifier]) -> None:
    issuer, verifier = keys
    token = issuer.mint(room="r1", identity="a", name="A", role="student", ttl_s=60, now=time.time() - 3600)
    with pytest.raises(TokenError) as err:
        verifier.verify(token)
    assert err.value.code == "token_expired"


def test_wrong_room_is_refused(keys: tuple[TokenIssuer, TokenVerifier]) -> None:
    issuer, verifier = keys
    with pytest.raises(TokenError) as err:
        verifier.verify(issuer.mint(room="r1", identity="a", name="A", role="student"), room="r2")
    assert err.value.code == "token_wrong_room"


@pytest.mark.parametrize(
    ("role", "perm"),
    [("student", Permission.MODERATE), ("observer", Permission.PUBLISH_VIDEO), ("recorder", Permission.DATA)],
)
def test_permissions_beyond_the_role_are_refused(
    keys: tuple[TokenIssuer, TokenVerifier], role: str, perm: Permission
) -> None:
    issuer, verifier = keys
    token = issuer.mint(room="r1", identity="a", name="A", role=role, permissions=frozenset({perm}))
    with pytest.raises(TokenError) as err:
        verifier.verify(token)
    assert err.value.code == "token_role_mismatch"


def test_parse_duration() -> None:
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400 and parse_duration("30") == 30
    for bad in ("", "-1h", "soon", "0"):
        with pytest.raises(ValueError):
            parse_duration(bad)
