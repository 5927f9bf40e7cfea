"""The generator's processes: publishers and subscribers, each an asyncio loop of aiortc peers.

The benchmark's main process starts them with ``multiprocessing`` (spawn) and drives them over a
pipe: it sends one :class:`WorkerSpec`, waits for ``("ready", info)``, later sends ``("collect",)``
and receives the packet logs, then ``("close",)``. A worker never decodes or encodes media.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiortc import RTCPeerConnection

from media.forwarding import configure_ice, rtc_configuration

from .clip import ensure_clip, load_stream
from .taps import Pacer, PublisherTap, SubscriberTap
from .targets import Client, Endpoint, client_for
from .tracks import ClipTrack, spread_start


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    role: str  # "publisher" | "subscriber"
    endpoint: Endpoint
    rooms: tuple[int, ...]  # one entry per peer: the room it publishes to / subscribes in
    audio: bool
    loss: float = 0.0
    seed: int = 0
    connect_timeout: float = 30.0
    concurrency: int = 8
    autogroup_nice: int | None = None
    pacing: float = 0.0  # publishers: pace video at this multiple of the clip's bitrate; 0 = aiortc's bursts


def own_scheduling_group(nice: int | None) -> None:
    """Put this process in its own session, hence its own scheduler autogroup: with autogroup on (the
    Linux default) CPU is shared fairly between sessions, so generator processes that stayed in the
    benchmark's session would share one slice of a busy machine. ``nice`` also sets the group's nice
    value (negative needs root)."""
    with contextlib.suppress(OSError):
        os.setsid()
    if nice is not None:
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a generator process."""
    own_scheduling_group(spec.autogroup_nice)
    try:
        asyncio.run(_Worker(conn, spec).run())
    except Exception:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self._conn = conn
        self._spec = spec
        self._pcs: list[RTCPeerConnection] = []
        self._publishers: list[tuple[int, PublisherTap, list[ClipTrack]]] = []
        self._subscribers: list[tuple[int, SubscriberTap]] = []
        self._marks: list[tuple[int, int]] = []

    async def _recv(self) -> Any:
        return await asyncio.to_thread(self._conn.recv)

    async def run(self) -> None:
        spec = self._spec
        configure_ice([spec.endpoint.extra.get("ice_address", "127.0.0.1")])
        client = client_for(spec.endpoint)
        try:
            if spec.role == "publisher":
                await self._start_publishers(client)
            else:
                await self._start_subscribers(client)
            self._conn.send(("ready", self._ready_info()))
            while True:
                command = await self._recv()
                if command[0] == "mark":
                    self._marks = [(tap.nack_messages, tap.nacked_packets) for _, tap in self._subscribers]
                elif command[0] == "collect":
                    self._conn.send(("data", self._collect()))
                elif command[0] == "close":
                    break
        finally:
            for _, tap in self._subscribers:
                tap.close()
            await asyncio.gather(*(pc.close() for pc in self._pcs), return_exceptions=True)
            await client.close()

    async def _start_publishers(self, client: Client) -> None:
        spec = self._spec
        video_path, audio_path = ensure_clip()
        video = load_stream(video_path, "video")
        audio = load_stream(audio_path, "audio") if spec.audio else None
        for k, room in enumerate(spec.rooms):
            pc = RTCPeerConnection(rtc_configuration())
            self._pcs.append(pc)
            start = spread_start(video, k, len(spec.rooms))
            tracks = [ClipTrack(video, start)] + ([ClipTrack(audio)] if audio is not None else [])
            for track in tracks:
                pc.addTransceiver(track, direction="sendonly")
            await asyncio.wait_for(client.publish(room, pc), spec.connect_timeout)
            pacer = Pacer(video.bitrate, spec.pacing) if spec.pacing > 0 else None
            self._publishers.append((room, PublisherTap(pc, pacer), tracks))
        # SFUs offer a feed to subscribers only once its publisher's connection is up (Janus refuses
        # to subscribe before); wait for every publisher to connect and send a first frame.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.connect_timeout
        while not all(
            pc.connectionState == "connected" and len(tap.log)
            for pc, (_, tap, _) in zip(self._pcs, self._publishers, strict=True)
        ):
            if loop.time() > deadline:
                raise TimeoutError("publishers did not connect: " + ", ".join(pc.connectionState for pc in self._pcs))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)

    async def _start_subscribers(self, client: Client) -> None:
        spec = self._spec
        gate = asyncio.Semaphore(spec.concurrency)

        async def one(index: int, room: int) -> None:
            async with gate:
                pc = RTCPeerConnection(rtc_configuration())
                self._pcs.append(pc)
                tap = SubscriberTap(spec.loss, seed=spec.seed * 100003 + index)
                self._subscribers.append((room, tap))

                def prepare() -> None:
                    for transceiver in pc.getTransceivers():
                        tap.tap(transceiver)
                    tap.watch_rtcp(pc)

                await asyncio.wait_for(client.subscribe(room, pc, prepare), spec.connect_timeout)

        await asyncio.gather(*(one(i, room) for i, room in enumerate(spec.rooms)))
        # readiness is reported either way; the main process decides what a late subscriber means
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(tap.receiving.wait() for _, tap in self._subscribers)), spec.connect_timeout
            )

    def _ready_info(self) -> dict[str, Any]:
        if self._spec.role == "publisher":
            return {"pid": os.getpid(), "publishers": len(self._publishers)}
        receiving = sum(1 for _, tap in self._subscribers if tap.first_video)
        return {"pid": os.getpid(), "subscribers": len(self._subscribers), "receiving": receiving}

    def _zeros(self) -> list[tuple[int, int]]:
        return [(0, 0)] * len(self._subscribers)

    def _collect(self) -> dict[str, Any]:
        if self._spec.role == "publisher":
            return {
                "publishers": [
                    {"room": room, "log": tap.log, "frames_sent": [t.frames_sent for t in tracks]}
                    for room, tap, tracks in self._publishers
                ]
            }
        return {
            "subscribers": [
                {
                    "room": room,
                    "log": tap.log,
                    "nack_messages": tap.nack_messages - m0,
                    "nacked_packets": tap.nacked_packets - p0,
                    "first_video": tap.first_video,
                    "stack_lags": tap.stack_lags,
                }
                for (room, tap), (m0, p0) in zip(self._subscribers, self._marks or self._zeros(), strict=True)
            ]
        }
