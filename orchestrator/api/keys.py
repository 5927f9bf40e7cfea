"""API keys: ``Authorization: Bearer cm_<key_id>_<secret>``.

Only the sha256 of the secret is stored. ``create_api_key``/``revoke_api_key``/``list_api_keys`` back the
``classmesh orchestrator api-key`` CLI; ``authenticate`` backs the API's auth middleware.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

from orchestrator.api.schemas import SCOPES
from orchestrator.errors import AuthenticationError, InvalidInputError, PermissionDeniedError
from orchestrator.store import ApiKey, Store
from orchestrator.store.models import ApiKeyId
from orchestrator.store.store import hash_secret

TOKEN_PREFIX = "cm_"
_TOKEN_RE = re.compile(r"cm_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", re.ASCII)


async def create_api_key(store: Store, name: str, scopes: Iterable[str]) -> tuple[ApiKeyId, str]:
    """Create a key; returns ``(key_id, token)``. The token is shown once and never stored."""
    scope_list = sorted(set(scopes))
    unknown = [s for s in scope_list if s not in SCOPES]
    if unknown or not scope_list:
        raise InvalidInputError(f"unknown or missing scopes {unknown}; choose from {', '.join(SCOPES)}")
    if not name.strip():
        raise InvalidInputError("an API key needs a name")
    key_id = ApiKeyId(secrets.token_hex(8))
    secret = secrets.token_urlsafe(32)
    await store.insert_api_key(
        ApiKey(key_id, name.strip(), tuple(scope_list), datetime.now(UTC), None), hash_secret(secret)
    )
    return key_id, f"{TOKEN_PREFIX}{key_id}_{secret}"


async def revoke_api_key(store: Store, key_id: str) -> bool:
    """Revoke a key at once; False if it does not exist or was already revoked."""
    return await store.revoke_api_key(key_id)


async def list_api_keys(store: Store) -> list[ApiKey]:
    return await store.list_api_keys()


async def authenticate(store: Store, authorization: str | None) -> ApiKey:
    """The active key behind an ``Authorization`` header value, or ``AuthenticationError``."""
    if not authorization:
        raise AuthenticationError("missing Authorization header; send 'Authorization: Bearer cm_...'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("the Authorization header must be 'Bearer <api key>'")
    match = _TOKEN_RE.fullmatch(token.strip())
    if match is None:
        raise AuthenticationError("malformed API key; keys look like cm_<16 hex>_<43 characters>")
    found = await store.get_api_key(match.group(1))
    if found is None or not hmac.compare_digest(found[1], hash_secret(match.group(2))):
        raise AuthenticationError("unknown API key")
    key, _ = found
    if not key.active:
        raise AuthenticationError("this API key has been revoked")
    return key


def require_scope(key: ApiKey, scope: str) -> None:
    if "admin" in key.scopes or scope in key.scopes:
        return
    raise PermissionDeniedError(scope)
