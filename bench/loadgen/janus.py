"""A small client of Janus's HTTP API (``/janus``): sessions, plugin handles and long-poll events.

One :class:`JanusSession` owns one aiohttp session, one Janus session and a long-poll task that
routes events to the handle they belong to. Requests are matched to their replies by transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)


class JanusError(Exception):
    """Janus refused a request, or answered something unexpected."""


class JanusHandle:
    """One attached plugin handle; :meth:`message` sends a request and waits for its plugin event."""

    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self._session = session
        self.handle_id = handle_id
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request (create, exists, ...): the plugin data of the reply."""
        reply = await self._session.post(f"/{self.handle_id}", {"janus": "message", "body": body})
        if reply.get("janus") != "success":
            raise JanusError(f"request {body.get('request')} failed: {reply}")
        data: dict[str, Any] = reply["plugindata"]["data"]
        if "error" in data:
            raise JanusError(f"request {body.get('request')}: {data['error']}")
        return data

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout: float = 15.0
    ) -> dict[str, Any]:
        """An asynchronous plugin request: waits for the next event on this handle."""
        payload: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            payload["jsep"] = jsep
        reply = await self._session.post(f"/{self.handle_id}", payload)
        if reply.get("janus") not in ("ack", "success"):
            raise JanusError(f"message {body.get('request')} refused: {reply}")
        if reply.get("janus") == "success":
            return reply
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if event.get("janus") == "event":
                data = event.get("plugindata", {}).get("data", {})
                if "error" in data:
                    raise JanusError(f"message {body.get('request')}: {data['error']}")
                return event


class JanusSession:
    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")
        self._http: aiohttp.ClientSession | None = None
        self.session_id = 0
        self._handles: dict[int, JanusHandle] = {}
        self._poll: asyncio.Task[None] | None = None

    async def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        payload = {**payload, "transaction": secrets.token_hex(6)}
        async with self._http.post(self._url + path, json=payload) as response:
            data: dict[str, Any] = await response.json(content_type=None)
        if data.get("janus") == "error":
            raise JanusError(f"{payload['janus']}: {data.get('error')}")
        return data

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._call(f"/{self.session_id}{path}", payload)

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        reply = await self._call("", {"janus": "create"})
        self.session_id = int(reply["data"]["id"])
        self._poll = asyncio.create_task(self._long_poll(), name=f"janus-poll:{self.session_id}")

    async def attach(self, plugin: str = "janus.plugin.videoroom") -> JanusHandle:
        reply = await self.post("", {"janus": "attach", "plugin": plugin})
        handle = JanusHandle(self, int(reply["data"]["id"]))
        self._handles[handle.handle_id] = handle
        return handle

    async def _long_poll(self) -> None:
        assert self._http is not None
        url = f"{self._url}/{self.session_id}?maxev=10"
        while True:
            try:
                async with self._http.get(url) as response:
                    data = await response.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                logger.debug("janus long poll failed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            for event in data if isinstance(data, list) else [data]:
                handle = self._handles.get(int(event.get("sender", 0) or 0))
                if handle is not None and event.get("janus") == "event":
                    handle.events.put_nowait(event)

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
            self._poll = None
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self.post("", {"janus": "destroy"})
            await self._http.close()
            self._http = None
