"""Join tokens: JWTs signed by the orchestrator's Ed25519 key; nodes and signaling hold only the public key.

Claims: ``room``, ``sub`` (identity), ``name``, ``role`` (instructor | student | observer | recorder),
``perms`` (publish_audio, publish_video, publish_screen, subscribe, data, moderate), ``region``, ``exp``,
``iat``, ``jti``, ``iss`` = "classmesh". A role caps the permissions a token may carry: a token that grants a
student "moderate" or an observer "publish_video" is refused even if its signature is valid.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "classmesh"
ALGORITHM = "EdDSA"


class Role(StrEnum):
    INSTRUCTOR = "instructor"
    STUDENT = "student"
    OBSERVER = "observer"
    RECORDER = "recorder"


class Permission(StrEnum):
    PUBLISH_AUDIO = "publish_audio"
    PUBLISH_VIDEO = "publish_video"
    PUBLISH_SCREEN = "publish_screen"
    SUBSCRIBE = "subscribe"
    DATA = "data"
    MODERATE = "moderate"


P = Permission
ROLE_MAX_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.INSTRUCTOR: frozenset(P),
    Role.STUDENT: frozenset({P.PUBLISH_AUDIO, P.PUBLISH_VIDEO, P.PUBLISH_SCREEN, P.SUBSCRIBE, P.DATA}),
    Role.OBSERVER: frozenset({P.SUBSCRIBE, P.DATA}),
    Role.RECORDER: frozenset({P.SUBSCRIBE}),
}
ROLE_DEFAULT_PERMISSIONS = ROLE_MAX_PERMISSIONS


class TokenError(Exception):
    """A token was refused. ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    room: str
    identity: str
    name: str
    role: Role
    permissions: frozenset[Permission]
    region: str | None
    expires_at: float
    token_id: str

    @property
    def hidden(self) -> bool:
        return self.role is Role.RECORDER

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_dev_keys(directory: Path) -> tuple[Path, Path]:
    """The dev key pair under ``directory`` (created on first use, private key mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "token-private.pem", directory / "token-public.pem"
    if not private.exists():
        key = generate_private_key()
        private.touch(mode=0o600)
        private.write_bytes(private_key_pem(key))
        public.write_bytes(public_key_pem(key))
    elif not public.exists():
        loaded = serialization.load_pem_private_key(private.read_bytes(), password=None)
        assert isinstance(loaded, Ed25519PrivateKey)
        public.write_bytes(public_key_pem(loaded))
    return private, public


class TokenIssuer:
    """Mints join tokens. Only the orchestrator (and the operator's CLI) holds one."""

    def __init__(self, private_key_pem_bytes: bytes) -> None:
        key = serialization.load_pem_private_key(private_key_pem_bytes, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("token signing key must be an Ed25519 private key")
        self._key = key

    @classmethod
    def from_file(cls, path: str | Path) -> TokenIssuer:
        return cls(Path(path).read_bytes())

    @property
    def public_key_pem(self) -> bytes:
        return public_key_pem(self._key)

    def mint(
        self,
        *,
        room: str,
        identity: str,
        name: str,
        role: Role | str,
        ttl_s: float = 7200,
        permissions: frozenset[Permission] | None = None,
        region: str | None = None,
        now: float | None = None,
    ) -> str:
        role = Role(role)
        perms = ROLE_DEFAULT_PERMISSIONS[role] if permissions is None else permissions
        issued = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "room": room,
            "sub": identity,
            "name": name,
            "role": role.value,
            "perms": sorted(p.value for p in perms),
            "iat": int(issued),
            "exp": int(issued + ttl_s),
            "jti": secrets.token_hex(8),
        }
        if region:
            claims["region"] = region
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)


class TokenVerifier:
    """Verifies join tokens with the orchestrator's public key."""

    def __init__(self, public_key_pem_bytes: bytes, *, leeway_s: float = 5.0) -> None:
        key = serialization.load_pem_public_key(public_key_pem_bytes)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("token verification key must be an Ed25519 public key")
        self._key = key
        self._leeway = leeway_s

    @classmethod
    def from_file(cls, path: str | Path) -> TokenVerifier:
        return cls(Path(path).read_bytes())

    def verify(self, token: object, *, room: str | None = None) -> Grant:
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise TokenError("token_invalid", "token must be a non-empty string of at most 4096 characters")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "room", "sub", "role", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token_expired", "token has expired") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token_invalid", "token signature is not valid") from None
        except jwt.PyJWTError as exc:
            raise TokenError("token_invalid", f"token is not valid: {exc}") from None
        try:
            role = Role(claims["role"])
        except ValueError:
            raise TokenError("token_invalid", f"unknown role {claims['role']!r}") from None
        perms_raw = claims.get("perms", [])
        try:
            perms = frozenset(Permission(p) for p in perms_raw)
        except (ValueError, TypeError):
            raise TokenError("token_invalid", "token carries an unknown permission") from None
        beyond = perms - ROLE_MAX_PERMISSIONS[role]
        if beyond:
            raise TokenError(
                "token_role_mismatch",
                f"role {role.value} may not hold {', '.join(sorted(beyond))}",
            )
        if room is not None and claims["room"] != room:
            raise TokenError("token_wrong_room", "token is for another room")
        return Grant(
            room=str(claims["room"]),
            identity=str(claims["sub"]),
            name=str(claims.get("name") or claims["sub"])[:64],
            role=role,
            permissions=perms,
            region=claims.get("region"),
            expires_at=float(claims["exp"]),
            token_id=str(claims["jti"]),
        )


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '1d' or plain seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h)") from None
    if value <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return value
