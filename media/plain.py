"""Plain RTP output for trusted subscribers (recorders): no ICE, DTLS or SRTP.

A recorder that joins over the bus (never a browser: signaling builds its own join requests) may ask for
``{"transport": {"type": "plain", "host": H, "port": P}}``. The node then sends that participant's outputs as
plain RTP from one UDP socket to ``(H, P)``, each track with its own SSRC, and a sender report per output every
second; RTCP from that address (NACK, PLI) goes to the outputs as it would on a peer connection. What each SSRC
carries is told with a ``plain_tracks`` message instead of an SDP offer; nothing is answered.

Receiving WebRTC in Python costs a recorder ~150 us per packet (ICE queue, DTLS/SRTP, aiortc's parsing); plain
RTP leaves the parsing of a 12-byte header. It is meant for the node's private network (mediasoup's
PlainTransport serves the same purpose). Datagrams from any other address are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from .forwarding import CodecInfo
from .rtp import ExtensionIds, is_rtcp

logger = logging.getLogger(__name__)

#: The codecs a plain output sends, by kind, with fixed payload types (the recorder reads them from
#: ``plain_tracks``; no negotiation). Retransmissions reuse the original payload type and SSRC (no RTX).
PLAIN_CODECS: dict[str, list[CodecInfo]] = {
    "audio": [CodecInfo(111, "audio/opus", 48000, (), None)],
    "video": [
        CodecInfo(96, "video/VP8", 90000, (), None),
        CodecInfo(102, "video/H264", 90000, (("packetization-mode", "1"),), None),
        CodecInfo(103, "video/H264", 90000, (("packetization-mode", "0"),), None),
    ],
}


class PlainTransport(asyncio.DatagramProtocol):
    """One UDP socket of one plain subscriber; its taps are the outputs' senders."""

    def __init__(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        self._transport: asyncio.DatagramTransport | None = None
        self._taps: list[PlainTap] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.ignored = 0  # datagrams from other addresses

    async def open(self, host: str) -> tuple[str, int]:
        """Bind on ``host`` (an ephemeral port); returns the local address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def tap(self, kind: str, index: int, on_rtcp: Callable[[bytes], Awaitable[None]]) -> PlainTap:
        tap = PlainTap(self, kind, f"p{index}", on_rtcp)
        self._taps.append(tap)
        return tap

    def drop(self, tap: PlainTap) -> None:
        """The output is gone: its RTCP is no longer dispatched."""
        if tap in self._taps:
            self._taps.remove(tap)

    def send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, self.remote)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if (addr[0], addr[1]) != self.remote or not is_rtcp(data):
            self.ignored += 1
            return
        for tap in self._taps:
            task = asyncio.ensure_future(tap.on_rtcp(data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: the recorder went away
        logger.debug("plain output to %s: %s", self.remote, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for task in self._tasks:
            task.cancel()
        self._taps.clear()


class PlainTap:
    """The sender side an ``OutputSlot`` writes to, over a :class:`PlainTransport` (see ``SenderTap``)."""

    def __init__(
        self, transport: PlainTransport, kind: str, mid: str, on_rtcp: Callable[[bytes], Awaitable[None]]
    ) -> None:
        self._transport = transport
        self.kind = kind
        self.mid: str | None = mid
        self.on_rtcp = on_rtcp
        self.ssrc = random.getrandbits(32) or 1
        self.rtx_ssrc = 0
        self.codecs = PLAIN_CODECS[kind]
        self.extensions = ExtensionIds()
        self.parameters: Any = None
        self.started = asyncio.Event()
        self.started.set()
        self.msid: tuple[str, str] = ("", "")

    @property
    def connected(self) -> bool:
        return True

    def set_msid(self, stream_id: str, track_id: str) -> None:
        self.msid = (stream_id, track_id)

    async def send(self, data: bytes) -> None:
        self._transport.send(data)

    def send_rtp_now(self, data: bytes) -> bool:
        self._transport.send(data)
        return True
