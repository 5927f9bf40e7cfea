"""The bus: how classmesh services talk to each other.

One ``Bus`` protocol, two implementations chosen once from config (``open_bus(url)``):

- ``LocalBus`` (``memory://``): in-process, for ``classmesh dev`` and unit tests. Payloads still go through
  JSON so that anything that works here also works over Redis.
- ``RedisBus`` (``redis://host:port/db``): Redis pub/sub for commands and request/reply, Redis Streams with
  consumer groups for durable events, plain keys with TTL for live cluster state.

Four kinds of traffic:

- **publish/subscribe** (``publish``, ``subscribe``): fire-and-forget commands and notifications; a subscriber
  that is not listening misses them.
- **durable streams** (``append``, ``read_group``, ``ack``, ``claim_stale``): events that must not be lost.
  Each consumer group sees every event; inside a group each event goes to one consumer and stays pending until
  acknowledged; a consumer that dies before acknowledging leaves it pending, and ``claim_stale`` hands it to
  another consumer once it has been idle long enough. Delivery is at-least-once: consumers are idempotent.
- **request/reply** (``request``, ``serve``): one responder per channel (e.g. ``media.<node_id>``); a request
  with no responder fails at once with ``NoResponderError``, a slow one with ``BusTimeoutError``; a responder
  that raises ``BusError`` (or a subclass with a ``code``) makes the request raise ``RemoteError`` with that code.
- **keys** (``kv_set``, ``kv_get``, ``kv_delete``, ``kv_renew``, ``incr``): small values with an optional TTL
  (room -> node map, leases, locks). ``only_if_absent``, ``if_value`` and ``kv_renew`` (extend the TTL only if
  the key still holds our value) make them usable as leases; ``incr`` gives fencing tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Payload = dict[str, Any]
Handler = Callable[[Payload], Awaitable[Payload]]


class BusError(Exception):
    """Base of bus errors. Raised by a request handler, it travels back to the caller with its code."""

    code = "bus_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class NoResponderError(BusError):
    code = "no_responder"


class BusTimeoutError(BusError):
    code = "timeout"


class RemoteError(BusError):
    """The responder answered with an error."""


class SubscriptionClosedError(BusError):
    code = "closed"


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    payload: Payload


class Subscription(Protocol):
    channel: str

    def __aiter__(self) -> AsyncIterator[Payload]: ...

    async def get(self) -> Payload: ...

    async def close(self) -> None: ...


class Bus(Protocol):
    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None: ...

    async def subscribe(self, channel: str) -> Subscription: ...

    async def append(self, stream: str, payload: Mapping[str, Any], *, maxlen: int = 100_000) -> str: ...

    async def ensure_group(self, stream: str, group: str) -> None: ...

    async def read_group(
        self, stream: str, group: str, consumer: str, *, count: int = 16, block_ms: int = 1000
    ) -> list[Delivery]: ...

    async def ack(self, stream: str, group: str, *ids: str) -> None: ...

    async def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 16
    ) -> list[Delivery]: ...

    async def request(self, channel: str, payload: Mapping[str, Any], *, timeout: float = 5.0) -> Payload: ...

    async def serve(self, channel: str, handler: Handler) -> Subscription: ...

    async def kv_set(
        self, key: str, value: str, *, ttl_ms: int | None = None, only_if_absent: bool = False
    ) -> bool: ...

    async def kv_get(self, key: str) -> str | None: ...

    async def kv_delete(self, key: str, *, if_value: str | None = None) -> bool: ...

    async def kv_renew(self, key: str, value: str, *, ttl_ms: int) -> bool: ...

    async def incr(self, key: str) -> int: ...

    async def close(self) -> None: ...


def open_bus(url: str) -> Bus:
    """The bus named by ``url``: ``memory://`` or ``redis://host:port/db``."""
    if url in ("memory://", "memory", ""):
        return LocalBus()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBus(url)
    raise ValueError(f"unsupported bus URL {url!r}: use memory:// or redis://host:port/db")


def _copy(payload: Mapping[str, Any]) -> Payload:
    """A JSON round trip: what a receiver gets over Redis, so LocalBus behaves the same."""
    return json.loads(json.dumps(payload))  # type: ignore[no-any-return]


def _error_reply(exc: BaseException) -> Payload:
    if isinstance(exc, BusError):
        return {"__error__": {"code": exc.code, "message": str(exc)}}
    logger.exception("request handler failed")
    return {"__error__": {"code": "internal", "message": "internal error in responder"}}


def _unwrap_reply(reply: Payload) -> Payload:
    err = reply.get("__error__")
    if err is not None:
        raise RemoteError(str(err.get("message", "")), code=str(err.get("code", "remote_error")))
    return reply


class _QueueSubscription:
    """A subscription fed by its bus through a queue; closing it unregisters it."""

    def __init__(self, channel: str, on_close: Callable[[_QueueSubscription], Awaitable[None]]) -> None:
        self.channel = channel
        self._queue: asyncio.Queue[Payload | None] = asyncio.Queue()
        self._on_close = on_close
        self._closed = False

    def feed(self, payload: Payload) -> None:
        if not self._closed:
            self._queue.put_nowait(payload)

    async def get(self) -> Payload:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            raise SubscriptionClosedError(f"subscription to {self.channel!r} is closed")
        return item

    def __aiter__(self) -> AsyncIterator[Payload]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Payload]:
        while True:
            try:
                yield await self.get()
            except SubscriptionClosedError:
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        await self._on_close(self)


class _ServeSubscription:
    """Returned by ``serve``: closing it stops answering the channel."""

    def __init__(self, channel: str, on_close: Callable[[], Awaitable[None]]) -> None:
        self.channel = channel
        self._on_close = on_close
        self._closed = asyncio.Event()

    def __aiter__(self) -> AsyncIterator[Payload]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Payload]:
        await self._closed.wait()
        return
        yield  # pragma: no cover

    async def get(self) -> Payload:
        await self._closed.wait()
        raise SubscriptionClosedError(f"responder on {self.channel!r} is closed")

    async def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            await self._on_close()


# --------------------------------------------------------------------------------------------- in-process


@dataclass
class _Group:
    next_index: int = 0
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (consumer, delivered at)


class LocalBus:
    """The in-process bus. One per process; every service of ``classmesh dev`` shares it."""

    def __init__(self) -> None:
        self._subs: dict[str, list[_QueueSubscription]] = {}
        self._handlers: dict[str, Handler] = {}
        self._streams: dict[str, list[tuple[str, Payload]]] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._stream_changed = asyncio.Condition()
        self._kv: dict[str, tuple[str, float | None]] = {}
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # pub/sub
    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        data = _copy(payload)
        for sub in list(self._subs.get(channel, ())):
            sub.feed(data)

    async def subscribe(self, channel: str) -> Subscription:
        sub = _QueueSubscription(channel, self._unsubscribe)
        self._subs.setdefault(channel, []).append(sub)
        return sub

    async def _unsubscribe(self, sub: _QueueSubscription) -> None:
        subs = self._subs.get(sub.channel, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._subs.pop(sub.channel, None)

    # streams
    async def append(self, stream: str, payload: Mapping[str, Any], *, maxlen: int = 100_000) -> str:
        entries = self._streams.setdefault(stream, [])
        index = self._index.setdefault(stream, {})
        entry_id = f"{int(time.time() * 1000)}-{next(self._seq)}"
        entries.append((entry_id, _copy(payload)))
        index[entry_id] = len(entries) - 1
        async with self._stream_changed:
            self._stream_changed.notify_all()
        return entry_id

    async def ensure_group(self, stream: str, group: str) -> None:
        self._streams.setdefault(stream, [])
        self._index.setdefault(stream, {})
        self._groups.setdefault((stream, group), _Group())

    async def read_group(
        self, stream: str, group: str, consumer: str, *, count: int = 16, block_ms: int = 1000
    ) -> list[Delivery]:
        await self.ensure_group(stream, group)
        state = self._groups[(stream, group)]
        entries = self._streams[stream]
        deadline = time.monotonic() + block_ms / 1000
        while state.next_index >= len(entries):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return []
            async with self._stream_changed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._stream_changed.wait()
        batch = entries[state.next_index : state.next_index + count]
        state.next_index += len(batch)
        now = time.monotonic()
        for entry_id, _ in batch:
            state.pending[entry_id] = (consumer, now)
        return [Delivery(entry_id, _copy(p)) for entry_id, p in batch]

    async def ack(self, stream: str, group: str, *ids: str) -> None:
        state = self._groups.get((stream, group))
        if state:
            for entry_id in ids:
                state.pending.pop(entry_id, None)

    async def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 16
    ) -> list[Delivery]:
        await self.ensure_group(stream, group)
        state = self._groups[(stream, group)]
        now = time.monotonic()
        out: list[Delivery] = []
        entries, index = self._streams[stream], self._index[stream]
        for entry_id, (_, since) in list(state.pending.items()):
            if len(out) >= count:
                break
            if (now - since) * 1000 >= min_idle_ms:
                state.pending[entry_id] = (consumer, now)
                out.append(Delivery(entry_id, _copy(entries[index[entry_id]][1])))
        return out

    # request/reply
    async def request(self, channel: str, payload: Mapping[str, Any], *, timeout: float = 5.0) -> Payload:
        handler = self._handlers.get(channel)
        if handler is None:
            raise NoResponderError(f"nobody serves {channel!r}")
        data = _copy(payload)
        task = asyncio.ensure_future(self._answer(handler, data))
        try:
            async with asyncio.timeout(timeout):
                reply = await asyncio.shield(task)
        except TimeoutError:
            # the handler keeps running (as a remote one would); its reply is dropped
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            raise BusTimeoutError(f"no reply on {channel!r} within {timeout:.1f}s") from None
        return _unwrap_reply(_copy(reply))

    @staticmethod
    async def _answer(handler: Handler, data: Payload) -> Payload:
        try:
            return await handler(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _error_reply(exc)

    async def serve(self, channel: str, handler: Handler) -> Subscription:
        if channel in self._handlers:
            raise BusError(f"{channel!r} already has a responder", code="already_served")
        self._handlers[channel] = handler

        async def stop() -> None:
            if self._handlers.get(channel) is handler:
                del self._handlers[channel]

        return _ServeSubscription(channel, stop)

    # keys
    def _live(self, key: str) -> str | None:
        item = self._kv.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._kv[key]
            return None
        return value

    async def kv_set(self, key: str, value: str, *, ttl_ms: int | None = None, only_if_absent: bool = False) -> bool:
        if only_if_absent and self._live(key) is not None:
            return False
        self._kv[key] = (value, time.monotonic() + ttl_ms / 1000 if ttl_ms else None)
        return True

    async def kv_get(self, key: str) -> str | None:
        return self._live(key)

    async def kv_delete(self, key: str, *, if_value: str | None = None) -> bool:
        current = self._live(key)
        if current is None or (if_value is not None and current != if_value):
            return False
        del self._kv[key]
        return True

    async def kv_renew(self, key: str, value: str, *, ttl_ms: int) -> bool:
        if self._live(key) != value:
            return False
        self._kv[key] = (value, time.monotonic() + ttl_ms / 1000)
        return True

    async def incr(self, key: str) -> int:
        value = int(self._live(key) or 0) + 1
        self._kv[key] = (str(value), None)
        return value

    async def close(self) -> None:
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._stream_changed:
            self._stream_changed.notify_all()


# ----------------------------------------------------------------------------------------------- Redis

_DELETE_IF_VALUE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""
_RENEW_IF_VALUE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end
"""


class RedisBus:
    """The bus over Redis: pub/sub, Streams with consumer groups, keys with TTL."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, decode_responses=True)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._subs: dict[str, list[_QueueSubscription]] = {}
        self._reply_channel = f"_reply.{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future[Payload]] = {}
        self._handlers: dict[str, Handler] = {}
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = asyncio.Lock()
        self._closed = False

    async def _ensure_reader(self) -> None:
        async with self._started:
            if self._reader is None:
                await self._pubsub.subscribe(self._reply_channel)
                self._reader = asyncio.create_task(self._read(), name=f"redis-bus-reader:{self._reply_channel}")

    async def _read(self) -> None:
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closed:
                    return
                logger.exception("redis bus: reading pub/sub failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if msg is None or msg.get("type") != "message":
                continue
            channel, raw = msg["channel"], msg["data"]
            try:
                data = json.loads(raw)
            except (TypeError, ValueError):
                logger.warning("redis bus: dropped a non-JSON message on channel=%s", channel)
                continue
            if channel == self._reply_channel:
                fut = self._pending.pop(data.get("id", ""), None)
                if fut is not None and not fut.done():
                    fut.set_result(data.get("reply", {}))
            elif channel in self._handlers:
                task = asyncio.create_task(self._answer(channel, data), name=f"redis-bus-answer:{channel}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            for sub in list(self._subs.get(channel, ())):
                sub.feed(data)

    async def _answer(self, channel: str, envelope: Payload) -> None:
        handler = self._handlers.get(channel)
        reply_to, req_id = envelope.get("reply_to"), envelope.get("id")
        if handler is None or not reply_to:
            return
        try:
            reply = await handler(envelope.get("payload", {}))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reply = _error_reply(exc)
        await self._redis.publish(reply_to, json.dumps({"id": req_id, "reply": reply}))

    async def publish(self, channel: str, payload: Mapping[str, Any]) -> None:
        await self._redis.publish(channel, json.dumps(payload))

    async def subscribe(self, channel: str) -> Subscription:
        await self._ensure_reader()
        sub = _QueueSubscription(channel, self._unsubscribe)
        first = channel not in self._subs and channel not in self._handlers
        self._subs.setdefault(channel, []).append(sub)
        if first:
            await self._pubsub.subscribe(channel)
        return sub

    async def _unsubscribe(self, sub: _QueueSubscription) -> None:
        subs = self._subs.get(sub.channel, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._subs.pop(sub.channel, None)
            if sub.channel not in self._handlers and not self._closed:
                await self._pubsub.unsubscribe(sub.channel)

    async def append(self, stream: str, payload: Mapping[str, Any], *, maxlen: int = 100_000) -> str:
        return str(await self._redis.xadd(stream, {"p": json.dumps(payload)}, maxlen=maxlen, approximate=True))

    async def ensure_group(self, stream: str, group: str) -> None:
        import redis.exceptions

        try:
            await self._redis.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def _deliveries(entries: list[Any]) -> list[Delivery]:
        out = []
        for entry_id, fields in entries:
            if fields is None:  # trimmed while pending
                continue
            out.append(Delivery(entry_id, json.loads(fields["p"])))
        return out

    async def read_group(
        self, stream: str, group: str, consumer: str, *, count: int = 16, block_ms: int = 1000
    ) -> list[Delivery]:
        await self.ensure_group(stream, group)
        result: Any = await self._redis.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
        if not result:
            return []
        _, entries = result[0]
        return self._deliveries(entries)

    async def ack(self, stream: str, group: str, *ids: str) -> None:
        if ids:
            await self._redis.xack(stream, group, *ids)

    async def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 16
    ) -> list[Delivery]:
        await self.ensure_group(stream, group)
        result = await self._redis.xautoclaim(stream, group, consumer, min_idle_ms, "0-0", count=count)
        return self._deliveries(result[1])

    async def request(self, channel: str, payload: Mapping[str, Any], *, timeout: float = 5.0) -> Payload:
        await self._ensure_reader()
        req_id = uuid.uuid4().hex
        fut: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            envelope = {"id": req_id, "reply_to": self._reply_channel, "payload": dict(payload)}
            receivers = await self._redis.publish(channel, json.dumps(envelope))
            if not receivers:
                raise NoResponderError(f"nobody serves {channel!r}")
            try:
                async with asyncio.timeout(timeout):
                    reply = await fut
            except TimeoutError:
                raise BusTimeoutError(f"no reply on {channel!r} within {timeout:.1f}s") from None
        finally:
            self._pending.pop(req_id, None)
        return _unwrap_reply(reply)

    async def serve(self, channel: str, handler: Handler) -> Subscription:
        if channel in self._handlers:
            raise BusError(f"{channel!r} already has a responder", code="already_served")
        await self._ensure_reader()
        self._handlers[channel] = handler
        if channel not in self._subs:
            await self._pubsub.subscribe(channel)

        async def stop() -> None:
            if self._handlers.get(channel) is handler:
                del self._handlers[channel]
                if channel not in self._subs and not self._closed:
                    await self._pubsub.unsubscribe(channel)

        return _ServeSubscription(channel, stop)

    async def kv_set(self, key: str, value: str, *, ttl_ms: int | None = None, only_if_absent: bool = False) -> bool:
        return bool(await self._redis.set(key, value, px=ttl_ms, nx=only_if_absent))

    async def kv_get(self, key: str) -> str | None:
        value = await self._redis.get(key)
        return None if value is None else str(value)

    async def kv_delete(self, key: str, *, if_value: str | None = None) -> bool:
        if if_value is None:
            return bool(await self._redis.delete(key))
        return bool(await self._redis.eval(_DELETE_IF_VALUE, 1, key, if_value))  # type: ignore[misc]

    async def kv_renew(self, key: str, value: str, *, ttl_ms: int) -> bool:
        return bool(await self._redis.eval(_RENEW_IF_VALUE, 1, key, value, ttl_ms))  # type: ignore[misc]

    async def incr(self, key: str) -> int:
        return int(await self._redis.incr(key))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        tasks = [t for t in [self._reader, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pubsub.aclose()
        await self._redis.aclose()
