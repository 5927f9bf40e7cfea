"""The leader's periodic loops share one shape: a round now, then one every interval, forever; a round that fails
is logged and the next comes on time (a database that is briefly away must not end a loop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

logger = logging.getLogger(__name__)


async def every(interval_s: float, one_round: Callable[[], Awaitable[object]], name: str) -> NoReturn:
    while True:
        try:
            await one_round()
        except Exception:
            logger.exception("%s round failed", name)
        await asyncio.sleep(interval_s)
