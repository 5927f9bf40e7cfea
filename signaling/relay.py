"""Where a room lives and how to talk to its node.

``NodeRelay`` finds the node hosting a room (the ``room_key`` in the bus kv first, so a class in progress
never depends on the orchestrator; the orchestrator's ``ensure_room`` only when the key is missing or
stale) and sends the node its commands over ``node_rpc(node_id)``, turning bus failures into signaling errors:
a node's own error code passes through (``NodeRejectedError``), silence becomes ``node_unavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from core.bus import Bus, BusError, NoResponderError, RemoteError
from core.messages import ORCHESTRATOR_RPC, node_rpc, room_key
from signaling.errors import NodeRejectedError, NodeUnavailableError, PlacementUnavailableError

logger = logging.getLogger(__name__)


class NodeRelay:
    def __init__(self, bus: Bus, *, request_timeout: float = 5.0) -> None:
        self._bus = bus
        self._timeout = request_timeout

    async def locate(self, room_id: str, region: str) -> tuple[str, bool]:
        """``(node_id, from_kv)``: the node hosting ``room_id``, asking the orchestrator only if needed."""
        node_id = await self._bus.kv_get(room_key(room_id))
        if node_id:
            return node_id, True
        return await self.place(room_id, region), False

    async def place(self, room_id: str, region: str) -> str:
        """Ask the orchestrator to place (or confirm) the room."""
        try:
            reply = await self._bus.request(
                ORCHESTRATOR_RPC,
                {"op": "ensure_room", "room_id": room_id, "region": region},
                timeout=self._timeout,
            )
        except RemoteError as exc:
            logger.warning("room=%s region=%s placement refused code=%s", room_id, region, exc.code)
            raise PlacementUnavailableError(f"no node for this room ({exc.code}): {exc}") from None
        except BusError as exc:
            logger.warning("room=%s region=%s orchestrator unreachable: %s", room_id, region, exc)
            raise PlacementUnavailableError("the orchestrator is unreachable; try again shortly") from None
        node_id = reply.get("node_id")
        if not isinstance(node_id, str) or not node_id:
            raise PlacementUnavailableError("the orchestrator returned no node")
        return node_id

    async def call(self, node_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """One command to a node; the reply, or a signaling error."""
        try:
            return await self._bus.request(node_rpc(node_id), payload, timeout=self._timeout)
        except RemoteError as exc:
            raise NodeRejectedError(str(exc) or exc.code, code=exc.code) from None
        except NoResponderError:
            raise NodeUnavailableError(f"media node {node_id} is not answering") from None
        except BusError as exc:
            raise NodeUnavailableError(f"media node {node_id} did not answer: {exc}") from None
