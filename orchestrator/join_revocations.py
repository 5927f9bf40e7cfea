"""JoinLinkRevocations: tells the classroom which join links the store has revoked.

The store records a revocation in ``join_links.revoked_at`` (in the transaction that replaces a session's
instructor); signaling, which verifies join tokens with the public key alone and has no database, learns it from
a bus key per token (``revoked_token_key(jti)``) that lives until the token would have expired anyway. A
``hello`` with a revoked token is refused with ``token_revoked``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from core.bus import Bus
from core.messages import revoked_token_key
from orchestrator.store.models import JoinLink

logger = logging.getLogger(__name__)

_MIN_TTL_MS = 60_000


class JoinLinkRevocations:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def __call__(self, links: Sequence[JoinLink]) -> None:
        now = datetime.now(UTC)
        for link in links:
            ttl_ms = max(_MIN_TTL_MS, int((link.expires_at - now).total_seconds() * 1000) + _MIN_TTL_MS)
            await self._bus.kv_set(revoked_token_key(link.jti), link.session_id, ttl_ms=ttl_ms)
            logger.info("join link revoked session=%s participant=%s", link.session_id, link.participant_id)
