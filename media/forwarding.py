"""The one place that reaches into aiortc's and aioice's private internals.

aiortc (pinned to 1.16.0 in pyproject.toml) gives the SFU ICE, DTLS, SRTP and SDP; everything
else happens below its public API, and only here:

* :class:`ReceiverTap` replaces ``RTCRtpReceiver._handle_rtp_packet`` on one receiver instance
  (aiortc's RTP router looks the method up on the instance). The replacement keeps the
  bookkeeping aiortc's own path does for the publisher leg (receiver statistics behind its RTCP
  receiver reports, RTX unwrapping, its NACK generator, its REMB estimator) and hands the packet
  to the forwarder instead of depacketising, buffering and decoding it. It also wraps
  ``_handle_rtcp_packet`` to learn the publisher's sender reports, and exposes the receiver's
  private ``_send_rtcp_pli``/``_send_rtcp_nack``.
* :class:`DirectReceive` replaces ``data_received`` on the publisher connection's aioice
  ``Connection``: once SRTP is up, an RTP packet is decrypted, parsed, routed and handed to its
  ``ReceiverTap`` in the socket's own callback, without aioice's queue and aiortc's DTLS task.
* :class:`SenderTap` turns an ``RTCRtpSender`` of a subscriber connection into a raw RTP output:
  its ``_run_rtp`` loop (which would call ``track.recv()`` and encode) is replaced by an idle
  coroutine, its ``_run_rtcp`` loop (zero-count sender reports) by one that sends the reports the
  forwarder builds, and its ``_handle_rtcp_packet`` hands subscriber RTCP (NACK, PLI, FIR, REMB,
  RR) to the forwarder. Once the transport is up, RTP leaves through :func:`send_now`'s steps (SRTP and
  the nominated ICE pair's socket); retransmissions and sender reports through ``sender.transport._send_rtp``.
* :func:`configure_ice` sets, process-wide, the host addresses aioice gathers candidates on and
  optionally a UDP port range for the sockets it binds.

``check_internals()`` asserts that every attribute used here still exists; tests/media/
test_forwarding.py calls it and exercises each hook so an aiortc upgrade fails loudly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aioice.ice
import pylibsrtp
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import rtcrtpreceiver as _aiortc_receiver
from aiortc import rtp as _aiortc_rtp
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import State as _DtlsState
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import RtpPacket
from pylibsrtp import _binding as _srtp_binding

from .errors import InternalsChangedError
from .rtp import ExtensionIds, RtpPacketLike, SenderReport

logger = logging.getLogger(__name__)

RtpHandler = Callable[[RtpPacketLike, float], None]
RtcpHandler = Callable[[bytes], Awaitable[None]]

_R = "_RTCRtpReceiver__"
_S = "_RTCRtpSender__"
_RECEIVER_ATTRS = (
    "_handle_rtp_packet",
    "_handle_rtcp_packet",
    "_send_rtcp",
    "_send_rtcp_nack",
    "_send_rtcp_pli",
    "_enabled",
    f"{_R}codecs",
    f"{_R}remote_streams",
    f"{_R}rtx_ssrc",
    f"{_R}nack_generator",
    f"{_R}remote_bitrate_estimator",
    f"{_R}rtcp_ssrc",
)
_SENDER_ATTRS = (
    "_ssrc",
    "_rtx_ssrc",
    "_stream_id",
    "_track_id",
    "_run_rtp",
    "_run_rtcp",
    "_handle_rtcp_packet",
    "send",
    f"{_S}rtp_started",
    f"{_S}rtp_exited",
    f"{_S}rtcp_started",
    f"{_S}rtcp_exited",
)


async def check_internals() -> None:
    """Raise :class:`InternalsChangedError` if aiortc/aioice lack an internal this module uses."""
    from aiortc import RTCPeerConnection

    missing: list[str] = []
    pc = RTCPeerConnection(rtc_configuration())
    try:
        transceiver = pc.addTransceiver("video", direction="sendrecv")
        for name in _RECEIVER_ATTRS:
            if not hasattr(transceiver.receiver, name):
                missing.append(f"RTCRtpReceiver.{name}")
        for name in _SENDER_ATTRS:
            if not hasattr(transceiver.sender, name):
                missing.append(f"RTCRtpSender.{name}")
        transport = transceiver.sender.transport
        for name in (
            "_send_rtp",
            "_rtp_router",
            "_rtp_header_extensions_map",
            "_handle_rtp_data",
            "state",
            "_state",
            "_tx_srtp",
            "_rx_srtp",
            "transport",
        ):
            if not hasattr(transport, name):
                missing.append(f"RTCDtlsTransport.{name}")
        if not hasattr(transport.transport, "_connection"):
            missing.append("RTCIceTransport._connection")
        if not hasattr(transport._rtp_router, "route_rtp"):
            missing.append("RtpRouter.route_rtp")
        for name in ("_codecs", "_headerExtensions"):
            if not hasattr(transceiver, name):
                missing.append(f"RTCRtpTransceiver.{name}")
    finally:
        await pc.close()
    connection = aioice.ice.Connection(ice_controlling=True)
    if not isinstance(getattr(connection, "_protocols", None), list):
        missing.append("aioice.ice.Connection._protocols")
    if not isinstance(getattr(connection, "_nominated", None), dict):
        missing.append("aioice.ice.Connection._nominated")
    if not isinstance(getattr(connection, "_queue", None), asyncio.Queue):
        missing.append("aioice.ice.Connection._queue")
    if not callable(getattr(connection, "data_received", None)):
        missing.append("aioice.ice.Connection.data_received")
    if not isinstance(getattr(aioice.ice.CandidatePair, "remote_addr", None), property):
        missing.append("aioice.ice.CandidatePair.remote_addr")
    session = pylibsrtp.Session()
    for name in ("_srtp", "_cdata", "_buffer"):
        if not hasattr(session, name):
            missing.append(f"pylibsrtp.Session.{name}")
    for module, name in (
        (_srtp_binding.lib, "srtp_protect"),
        (pylibsrtp, "SRTP_MAX_TRAILER_LEN"),
        (pylibsrtp, "ERRORS"),
        (aioice.ice, "get_host_addresses"),
        (aioice.ice, "StunProtocol"),
        (aioice.ice.Connection, "get_component_candidates"),
        (_aiortc_rtp, "unwrap_rtx"),
        (_aiortc_rtp, "pack_remb_fci"),
        (_aiortc_rtp, "RtcpRtpfbPacket"),
        (_aiortc_rtp, "RTCP_RTPFB_NACK"),
        (_aiortc_rtp, "RtcpSrPacket"),
        (_aiortc_receiver, "StreamStatistics"),
    ):
        if not hasattr(module, name):
            missing.append(f"{getattr(module, '__name__', module)}.{name}")
    if missing:
        raise InternalsChangedError("aiortc/aioice internals changed: " + ", ".join(missing))


# -- ICE -----------------------------------------------------------------------------------------

_original_get_host_addresses = aioice.ice.get_host_addresses
_original_get_component_candidates = aioice.ice.Connection.get_component_candidates


@dataclass(frozen=True, slots=True)
class IceSettings:
    host_addresses: tuple[str, ...] | None = None
    port_range: tuple[int, int] | None = None


_ice = IceSettings()


def configure_ice(addresses: Sequence[str] | None, port_range: tuple[int, int] | None = None) -> None:
    """Set, for the whole process, the addresses aioice binds and announces as host candidates
    (``None`` restores aioice's interface scan) and a UDP port range for those sockets.

    Tests use ``["127.0.0.1"]``; production passes the node's public (or 1:1 NATed) address.
    Call before creating peer connections. With a port range, host sockets are bound by this
    module (at a random free port in the range) and no server-reflexive query is made for them;
    the SFU announces its configured address instead of asking a STUN server.
    """
    global _ice
    if port_range is not None:
        lo, hi = port_range
        if not (0 < lo <= hi <= 65535):
            raise ValueError(f"invalid port range {port_range}")
    _ice = IceSettings(tuple(addresses) if addresses is not None else None, port_range)
    if addresses is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses  # type: ignore[attr-defined]
    else:
        chosen = list(addresses)

        def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        aioice.ice.get_host_addresses = get_host_addresses  # type: ignore[attr-defined]
    if port_range is None:
        aioice.ice.Connection.get_component_candidates = _original_get_component_candidates  # type: ignore[method-assign]
    else:
        aioice.ice.Connection.get_component_candidates = _ranged_component_candidates  # type: ignore[method-assign]


def ice_settings() -> IceSettings:
    return _ice


async def _ranged_component_candidates(
    self: aioice.ice.Connection,
    component: int,
    addresses: list[str],
    timeout: int = 5,
) -> list[Candidate]:
    # STUN/TURN candidates (if configured) come from aioice; host sockets are bound here.
    candidates: list[Candidate] = await _original_get_component_candidates(self, component, [], timeout)
    assert _ice.port_range is not None
    lo, hi = _ice.port_range
    loop = asyncio.get_running_loop()
    for address in addresses:
        ports = list(range(lo, hi + 1))
        random.shuffle(ports)
        for port in ports:
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: aioice.ice.StunProtocol(self), local_addr=(address, port)
                )
            except OSError:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
            host, bound_port = transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=bound_port,
                type="host",
            )
            self._protocols.append(protocol)
            candidates.append(protocol.local_candidate)
            break
        else:
            logger.warning("address=%s no free UDP port in range %d-%d", address, lo, hi)
    return candidates


def rtc_configuration() -> RTCConfiguration:
    """A configuration that never contacts a STUN/TURN server (aiortc defaults to Google's) and
    bundles every m-section on one ICE/DTLS transport (one UDP socket per peer connection)."""
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


# -- publisher side ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecInfo:
    payload_type: int
    mime_type: str  # e.g. "video/VP8"
    clock_rate: int
    parameters: tuple[tuple[str, str], ...]
    rtx_payload_type: int | None

    @property
    def name(self) -> str:
        return self.mime_type.split("/", 1)[1].lower()


def transceiver_codecs(transceiver: RTCRtpTransceiver) -> list[CodecInfo]:
    """Negotiated media codecs of a transceiver (RTX folded into ``rtx_payload_type``)."""
    codecs = list(transceiver._codecs)
    rtx = {c.parameters.get("apt"): c.payloadType for c in codecs if is_rtx(c)}
    return [
        CodecInfo(
            payload_type=int(c.payloadType or 0),
            mime_type=c.mimeType,
            clock_rate=c.clockRate,
            parameters=tuple(sorted((str(k), str(v)) for k, v in c.parameters.items())),
            rtx_payload_type=rtx.get(c.payloadType),
        )
        for c in codecs
        if not is_rtx(c)
    ]


def transceiver_extensions(transceiver: RTCRtpTransceiver) -> ExtensionIds:
    return ExtensionIds.from_uris((e.id, e.uri) for e in transceiver._headerExtensions)


def _route(dtls: Any) -> tuple[Any, Any, Callable[[bytes, Any], None], Any, Any] | None:
    """(transport, its SRTP session, the nominated ICE pair's ``sendto``, the peer's address, the pair), or None
    while the transport is not up or has no nominated pair."""
    if dtls._state is not _DtlsState.CONNECTED:
        return None
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None or pair.protocol.transport is None:
        return None
    return dtls, dtls._tx_srtp, pair.protocol.transport.sendto, pair.remote_addr, pair


def send_now(dtls: Any, data: bytes, *, rtcp: bool = False) -> bool:
    """Protect one RTP (or, with ``rtcp``, RTCP) packet with ``dtls``'s SRTP session and hand it to the nominated
    ICE pair's socket right here; False (nothing sent) when the transport is not up or has no nominated pair yet.

    The same steps as aiortc's ``_send_rtp``, without the five coroutines aiortc and aioice stack between the two
    (~5 % of the node's CPU at 64 streams). aiortc's transport byte counters do not see these packets; nothing
    here reads them."""
    route = _route(dtls)
    if route is None:
        return False
    _, srtp, sendto, addr, _ = route
    sendto(srtp.protect_rtcp(data) if rtcp else srtp.protect(data), addr)
    return True


def srtp_protector(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """``session.protect`` for one output's packets, with the same libsrtp call on the session's own buffer but
    without what pylibsrtp adds per call (an ``int *`` allocated through cffi, type and length checks, a
    name-mangled method): 2.6-3.5 µs instead of 5.1-6.1 µs for a 1.1 kB packet here, measured in a tight loop."""
    context = session._srtp[0]
    cdata = session._cdata
    buffer = session._buffer
    length = _srtp_binding.ffi.new("int *")
    protect = _srtp_binding.lib.srtp_protect
    limit = len(buffer) - pylibsrtp.SRTP_MAX_TRAILER_LEN

    def run(data: bytes, _session: pylibsrtp.Session = session) -> bytes:  # the default keeps the session alive
        size = len(data)
        if size > limit:
            raise ValueError("packet is too long")
        buffer[0:size] = data
        length[0] = size
        rc = protect(context, cdata, length)
        if rc:
            raise pylibsrtp.Error(pylibsrtp.ERRORS[rc])
        return buffer[0 : length[0]]  # a copy (bytes)

    return run


#: aiortc stamps arrivals in milliseconds since the NTP epoch (``aiortc.clock.current_ms``, which goes through
#: ``datetime``); the direct path uses the same origin, so the REMB estimator sees one clock from both paths.
_NTP_EPOCH_MS = 2_208_988_800_000


class ReceiverTap:
    """Takes a publisher receiver's RTP before aiortc depacketises or decodes it.

    Packets arrive either through aiortc (the connection's first ones, and any that queue behind a DTLS or
    SRTCP datagram) or, with ``direct``, through the connection's :class:`DirectReceive`; both end in
    :meth:`handle`. (The benchmark's subscribers count at the socket themselves and pass ``direct=False``.)
    """

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        on_rtp: RtpHandler,
        on_sender_report: Callable[[SenderReport], None],
        *,
        direct: bool = True,
    ) -> None:
        self._receiver = receiver
        self._on_rtp = on_rtp
        self._on_sender_report = on_sender_report
        self._original_rtcp = receiver._handle_rtcp_packet
        self._closed = False
        self.failures = 0
        receiver._handle_rtp_packet = self._handle_rtp  # type: ignore[method-assign]
        receiver._handle_rtcp_packet = self._handle_rtcp  # type: ignore[method-assign]
        if direct:
            DirectReceive.of(receiver.transport).taps[receiver] = self

    async def _handle_rtp(self, packet: Any, arrival_time_ms: int) -> None:
        self.handle(packet, arrival_time_ms)

    def handle(self, packet: Any, arrival_time_ms: int) -> None:
        """Both paths end here. An exception is logged (the first, then every 1000th) and the packet dropped:
        raised into aiortc's task it would end the whole connection, into the socket callback flood the log."""
        try:
            self._handle(packet, arrival_time_ms)
        except Exception:
            self.failures += 1
            if self.failures % 1000 == 1:
                logger.exception("ssrc=%d handling a packet failed (%d so far)", packet.ssrc, self.failures)

    def _handle(self, packet: Any, arrival_time_ms: int) -> None:
        r = self._receiver
        if self._closed or not r._enabled:
            return
        d = r.__dict__
        codecs = d[f"{_R}codecs"]
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        estimator = d[f"{_R}remote_bitrate_estimator"]
        rtcp_ssrc = d[f"{_R}rtcp_ssrc"]
        if estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            if rtcp_ssrc is not None and remb is not None:
                fb = _aiortc_rtp.RtcpPsfbPacket(
                    fmt=_aiortc_rtp.RTCP_PSFB_APP,
                    ssrc=rtcp_ssrc,
                    media_ssrc=0,
                    fci=_aiortc_rtp.pack_remb_fci(*remb),
                )
                send_now(r.transport, bytes(fb), rtcp=True)  # not up: the estimator sends another one soon
        streams = d[f"{_R}remote_streams"]
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = _aiortc_receiver.StreamStatistics(codec.clockRate)
        stats.add(packet)
        if is_rtx(codec):
            original_ssrc = d[f"{_R}rtx_ssrc"].get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if original_ssrc is None or len(packet.payload) < 2 or apt not in codecs:
                return
            packet = _aiortc_rtp.unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
        nack = d[f"{_R}nack_generator"]
        if nack is not None and nack.add(packet) and rtcp_ssrc is not None:
            request = _aiortc_rtp.RtcpRtpfbPacket(
                fmt=_aiortc_rtp.RTCP_RTPFB_NACK, ssrc=rtcp_ssrc, media_ssrc=packet.ssrc
            )
            request.lost = sorted(nack.missing)
            send_now(r.transport, bytes(request), rtcp=True)
        self._on_rtp(packet, arrival_time_ms / 1000.0)

    async def _handle_rtcp(self, packet: Any) -> None:
        await self._original_rtcp(packet)
        if isinstance(packet, _aiortc_rtp.RtcpSrPacket) and not self._closed:
            info = packet.sender_info
            self._on_sender_report(
                SenderReport(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count)
            )

    async def send_pli(self, media_ssrc: int) -> None:
        await self._receiver._send_rtcp_pli(media_ssrc)

    async def send_nack(self, media_ssrc: int, lost: Sequence[int]) -> None:
        await self._receiver._send_rtcp_nack(media_ssrc, list(lost))

    def close(self) -> None:
        self._closed = True


class DirectReceive:
    """The receive path of one publisher connection, below aiortc.

    aioice hands every datagram of a connection to ``Connection.data_received``, which queues it for aiortc's
    DTLS task; that task decrypts it and awaits a chain of coroutines down to the receiver. Replaced on the
    instance, ``data_received`` does the same steps for an SRTP-protected RTP packet in the socket's callback
    and calls the receiver's :class:`ReceiverTap` directly. Everything else (STUN is handled before this,
    DTLS, SRTCP, packets before SRTP is up) takes aiortc's path, and so does any packet arriving while that
    path still holds one, which keeps the arrival order.
    """

    def __init__(self, dtls: Any) -> None:
        self._dtls = dtls
        connection = dtls.transport._connection
        self._queue: asyncio.Queue[tuple[bytes, int] | None] = connection._queue
        #: receiver → its tap; a closed tap stays (its packets are dropped there)
        self.taps: dict[Any, ReceiverTap] = {}
        self.packets = 0
        self.malformed = 0  # decrypted but not parseable as RTP (dropped)
        connection.data_received = self.data_received

    @classmethod
    def of(cls, dtls: Any) -> DirectReceive:
        """The direct path of a DTLS transport's connection, installed on first use."""
        existing = getattr(dtls.transport._connection.data_received, "__self__", None)
        return existing if isinstance(existing, DirectReceive) else cls(dtls)

    def data_received(self, data: bytes, component: int) -> None:
        dtls = self._dtls
        srtp = dtls._rx_srtp
        if (
            srtp is None
            or dtls._state is not _DtlsState.CONNECTED
            or len(data) < 12
            or not (127 < data[0] < 192)
            or 192 <= data[1] <= 208  # RTCP
            or not self._queue.empty()
        ):
            self._queue.put_nowait((data, component))
            return
        arrival_ms = int(time.time() * 1000) + _NTP_EPOCH_MS
        try:
            plain = srtp.unprotect(data)
        except pylibsrtp.Error:
            return  # a replay, or not ours: aiortc drops these too
        try:
            packet = RtpPacket.parse(plain, dtls._rtp_header_extensions_map)
        except Exception:  # ValueError, or struct.error from an extension of the wrong size
            self.malformed += 1
            return
        receiver = dtls._rtp_router.route_rtp(packet)
        tap = self.taps.get(receiver)
        if tap is None:
            return  # aiortc would route it nowhere either (a receiver without a tap never exists on a publisher)
        self.packets += 1
        tap.handle(packet, arrival_ms)


# -- subscriber side -----------------------------------------------------------------------------


class SenderTap:
    """Turns a subscriber connection's ``RTCRtpSender`` into a raw RTP output.

    ``sender_reports`` is called about once a second once the sender runs and returns the RTCP
    (SR, SDES) to send, or None. ``on_rtcp`` receives every RTCP packet aiortc routed to this
    sender, re-serialized (parse it with :func:`media.rtp.parse_rtcp`).
    """

    def __init__(
        self,
        transceiver: RTCRtpTransceiver,
        on_rtcp: RtcpHandler,
        sender_reports: Callable[[], bytes | None],
        interval: float = 1.0,
    ) -> None:
        self._transceiver = transceiver
        sender = transceiver.sender
        self._sender = sender
        self._on_rtcp = on_rtcp
        self._sender_reports = sender_reports
        self._interval = interval
        self._original_send = sender.send
        self.parameters: RTCRtpSendParameters | None = None
        self.started = asyncio.Event()
        #: (transport, protect, sendto, address, ICE pair): looked up again when aioice nominates another pair
        #: (a check from a new address after a NAT rebinding succeeds) or the transport goes down
        self._route: tuple[Any, Callable[[bytes], bytes], Callable[[bytes, Any], None], Any, Any] | None = None
        self.protect_failures = 0
        sender._run_rtp = self._idle_rtp  # type: ignore[method-assign]
        sender._run_rtcp = self._run_rtcp  # type: ignore[method-assign]
        sender._handle_rtcp_packet = self._handle_rtcp  # type: ignore[method-assign]
        sender.send = self._send_parameters  # type: ignore[method-assign]
        # The receiver half of this sendonly transceiver never gets RTP, but aiortc gave it a bandwidth
        # estimator with 1000 bucket objects: at 64 outputs, two thirds of the process's tracked objects,
        # walked by every full garbage collection (a 20-60 ms pause in forwarding). aiortc checks for None.
        transceiver.receiver.__dict__[f"{_R}remote_bitrate_estimator"] = None

    @property
    def ssrc(self) -> int:
        return int(self._sender._ssrc)

    @property
    def rtx_ssrc(self) -> int:
        return int(self._sender._rtx_ssrc)

    @property
    def mid(self) -> str | None:
        return self._transceiver.mid

    @property
    def codecs(self) -> list[CodecInfo]:
        return transceiver_codecs(self._transceiver)

    @property
    def extensions(self) -> ExtensionIds:
        return transceiver_extensions(self._transceiver)

    @property
    def connected(self) -> bool:
        return self.started.is_set() and self._sender.transport.state == "connected"

    def set_msid(self, stream_id: str, track_id: str) -> None:
        """Set what the next offer announces as ``a=msid:<stream_id> <track_id>`` for this sender."""
        self._sender._stream_id = stream_id
        self._sender._track_id = track_id

    async def send(self, data: bytes) -> None:
        """Send one RTP or RTCP packet (SRTP-protected by aiortc); silently dropped if not connected."""
        try:
            await self._sender.transport._send_rtp(data)
        except ConnectionError:
            pass

    def send_rtp_now(self, data: bytes) -> bool:
        """Send one RTP packet right here (as :func:`send_now`); False (nothing sent) when the transport is not up.
        The route is looked up once per connection (and again if aioice nominates another pair), not per packet."""
        dtls = self._sender.transport
        route = self._route
        if (
            route is None
            or route[0] is not dtls
            or dtls._state is not _DtlsState.CONNECTED
            or dtls.transport._connection._nominated.get(1) is not route[4]
        ):
            found = _route(dtls)
            if found is None:
                self._route = None
                return False
            route = self._route = (dtls, srtp_protector(found[1]), found[2], found[3], found[4])
        try:
            protected = route[1](data)
        except (pylibsrtp.Error, ValueError) as exc:  # this output loses this packet; the fan-out goes on
            self.protect_failures += 1
            if self.protect_failures % 1000 == 1:
                logger.warning("ssrc=%d packet not protected (%d so far): %s", self.ssrc, self.protect_failures, exc)
            return False
        route[2](protected, route[3])
        return True

    async def _send_parameters(self, parameters: RTCRtpSendParameters) -> None:
        self.parameters = parameters
        await self._original_send(parameters)
        self.started.set()

    async def _idle_rtp(self, codec: Any) -> None:
        d = self._sender.__dict__
        d[f"{_S}rtp_started"].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        d[f"{_S}rtp_exited"].set()

    async def _run_rtcp(self) -> None:
        d = self._sender.__dict__
        d[f"{_S}rtcp_started"].set()
        try:
            while True:
                await asyncio.sleep(self._interval * (0.5 + random.random()))
                try:
                    data = self._sender_reports()
                    if data:
                        await self.send(data)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("sender report failed ssrc=%d", self.ssrc)
        except asyncio.CancelledError:
            pass
        d[f"{_S}rtcp_exited"].set()

    async def _handle_rtcp(self, packet: Any) -> None:
        try:
            await self._on_rtcp(bytes(packet))
        except Exception:
            logger.exception("subscriber RTCP handling failed ssrc=%d", self.ssrc)


# -- helpers for test clients (aiortc peers standing in for browsers) ----------------------------

PacketObserver = Callable[[Any], None]


def observe_receiver(receiver: RTCRtpReceiver, observer: PacketObserver, *, passthrough: bool = True) -> None:
    """Call ``observer(packet)`` for every RTP packet routed to ``receiver`` (RTX included, before
    unwrapping). With ``passthrough=False`` aiortc never sees the packet (no NACK, no decode)."""
    original = receiver._handle_rtp_packet

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        observer(packet)
        if passthrough:
            await original(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


def observe_receiver_rtcp(receiver: RTCRtpReceiver, observer: Callable[[bytes], None]) -> None:
    """Call ``observer(raw_rtcp)`` for every RTCP packet routed to ``receiver`` (e.g. SRs)."""
    original = receiver._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        observer(bytes(packet))
        await original(packet)

    receiver._handle_rtcp_packet = handle  # type: ignore[method-assign]


def observe_sender_rtcp(sender: RTCRtpSender, observer: Callable[[bytes], None]) -> None:
    """Call ``observer(raw_rtcp)`` for every RTCP packet routed to ``sender`` (e.g. PLIs)."""
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        observer(bytes(packet))
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


async def send_raw_rtcp(transceiver: RTCRtpTransceiver, data: bytes) -> None:
    """Send raw RTCP on a transceiver's DTLS transport."""
    await transceiver.receiver.transport._send_rtp(data)


def sender_ssrc(sender: RTCRtpSender) -> int:
    return int(sender._ssrc)
