"""The aiortc MediaRelay baseline: a tiny SFU that decodes once and encodes per subscriber.

This is what aiortc's public API offers for one-to-many: the publisher's track is decoded by its
``RTCRtpReceiver``, ``MediaRelay`` hands the decoded frames to one proxy track per subscriber, and
each subscriber's ``RTCRtpSender`` encodes them again. It is the baseline the capacity benchmark
names; classmesh's media node forwards RTP instead.

    python -m bench.loadgen.mediarelay_sfu --port 8800

HTTP (loopback): ``POST /publish/{room}`` with ``{"sdp", "type": "offer"}`` (the publisher offers
sendonly audio/video) and ``POST /subscribe/{room}`` with a recvonly offer; both answer
``{"sdp", "type": "answer"}``. A subscriber of a room whose publisher has not arrived gets 409.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import dataclass, field

from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from media.forwarding import configure_ice, rtc_configuration

logger = logging.getLogger("bench.mediarelay")


@dataclass
class RelayRoom:
    relay: MediaRelay = field(default_factory=MediaRelay)
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class RelayServer:
    def __init__(self) -> None:
        self._rooms: dict[str, RelayRoom] = {}
        self._pcs: set[RTCPeerConnection] = set()

    def room(self, name: str) -> RelayRoom:
        return self._rooms.setdefault(name, RelayRoom())

    async def publish(self, request: web.Request) -> web.Response:
        room = self.room(request.match_info["room"])
        offer = await request.json()
        pc = RTCPeerConnection(rtc_configuration())
        self._pcs.add(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            room.tracks[track.kind] = track
            room.ready.set()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer"})

    async def subscribe(self, request: web.Request) -> web.Response:
        room = self.room(request.match_info["room"])
        if not room.tracks:
            raise web.HTTPConflict(text="no publisher in this room yet")
        offer = await request.json()
        pc = RTCPeerConnection(rtc_configuration())
        self._pcs.add(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        for transceiver in pc.getTransceivers():
            track = room.tracks.get(transceiver.kind)
            if track is not None:
                # buffered=False: a slow encoder gets the newest frame, not a growing queue
                pc.addTrack(room.relay.subscribe(track, buffered=False))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer"})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"rooms": len(self._rooms), "peer_connections": len(self._pcs)})

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self._pcs), return_exceptions=True)
        self._pcs.clear()


def build_app(server: RelayServer) -> web.Application:
    app = web.Application()
    app.router.add_post("/publish/{room}", server.publish)
    app.router.add_post("/subscribe/{room}", server.subscribe)
    app.router.add_get("/healthz", server.healthz)
    return app


async def serve(host: str, port: int) -> None:
    configure_ice([host])
    server = RelayServer()
    runner = web.AppRunner(build_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    logger.info("mediarelay baseline listening on http://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
