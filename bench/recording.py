"""Benchmark of the recorder's live path (issue 7). Prints ONE JSON object.

    .venv/bin/python bench/recording.py                 # 3 publishers, 15 s window
    .venv/bin/python bench/recording.py --publishers 3 --window 30

What it measures: CPU (user+sys, from /proc/<pid>/stat) of a recorder *process* over a fixed
window while it records one room with ``--publishers`` participants, each sending pre-encoded VP8
(~1 Mbit/s, 640x360, 30 fps) and Opus. Everything runs on loopback:

* a real redis-server (the bus between processes),
* a node process: a ``media.node.MediaNode`` plus the publishers (aiortc peers fed by
  ``MediaPlayer(decode=False)``, so nobody encodes on the live path),
* the recorder process, run three times on the same room: ``record`` (``recorder.Recorder`` as deployed: plain
  RTP from the node, depacketize, clock mapping, segment writing with fsync), the baseline ``record-webrtc`` (the
  same recorder over a WebRTC peer connection, as before plain RTP existed) and ``receive-webrtc`` (that peer
  connection with packets only counted: the cost of receiving WebRTC at all).

Result: ``cores_per_room_copy`` (record CPU seconds / window seconds; the median of ``--repeat`` runs, each
listed in ``cores_per_room_copy_runs``, run between the baselines) against the target of 0.02, and
``ratio_plain_vs_webrtc``. ``--batch-ms`` sets how often the recorder reads its plain RTP socket (default: the
recorder's own ``plain_batch_s``), for A/B runs of that trade-off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NODE = "bench-node"
ROOM = "bench-room"
TICKS = os.sysconf("SC_CLK_TCK")


#: record: the product's recorder (plain RTP from the node); record-webrtc: the same over a peer connection (the
#: baseline in the same run); receive-webrtc: that peer connection with nothing depacketized or written
MODES = ("record", "record-webrtc", "receive-webrtc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def make_media(path: Path, seconds: int) -> Path:
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=330:sample_rate=48000",
            "-t",
            str(seconds),
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "libvpx",
            "-b:v",
            "1M",
            "-minrate",
            "1M",
            "-maxrate",
            "1M",
            "-g",
            "60",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-y",
            str(path),
        ],
        check=True,
    )
    return path


# -- node process ---------------------------------------------------------------------------------


async def run_node(redis_url: str, media: Path, publishers: int) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    from core.bus import RedisBus
    from core.messages import node_rpc
    from core.service import ServiceState
    from media.forwarding import configure_ice, rtc_configuration
    from media.node import MediaNode, MediaNodeConfig

    configure_ice(["127.0.0.1"])
    bus = RedisBus(redis_url)
    node = MediaNode(MediaNodeConfig(NODE, "bench", "http://127.0.0.1", ice_addresses=("127.0.0.1",)), bus)
    await node.start()
    node.set_state(ServiceState.SERVING)
    pcs = []
    for i in range(publishers):
        pid = f"pub{i}"
        await bus.request(
            node_rpc(NODE),
            {
                "op": "join",
                "room_id": ROOM,
                "participant_id": pid,
                "identity": pid,
                "name": pid,
                "role": "student",
                "permissions": ["publish_audio", "publish_video"],
            },
        )
        player = MediaPlayer(str(media), decode=False)
        pc = RTCPeerConnection(rtc_configuration())
        assert player.video is not None and player.audio is not None
        v = pc.addTransceiver(player.video, direction="sendonly")
        a = pc.addTransceiver(player.audio, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        reply = await bus.request(
            node_rpc(NODE),
            {
                "op": "publish",
                "participant_id": pid,
                "sdp": pc.localDescription.sdp,
                "sources": {v.mid: "camera", a.mid: "microphone"},
            },
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        pcs.append(pc)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for pc in pcs:
        await pc.close()
    await node.close()
    await bus.close()


def count_segments(directory: Path) -> int:
    return len(list(directory.glob("seg-*.json")))


# -- recorder process -----------------------------------------------------------------------------


async def run_recorder(
    redis_url: str, mode: str, directory: Path, warmup: float, window: float, batch_s: float
) -> None:
    from core.bus import RedisBus
    from media.forwarding import configure_ice
    from recorder.recorder import Recorder, RecorderConfig

    configure_ice(["127.0.0.1"])
    bus = RedisBus(redis_url)

    class ReceiveOnly(Recorder):
        """Baseline: same join, same peer connection and RTP tap; packets are only counted."""

        received = 0

        def _on_packet(self, state: Any, packet: Any, now: float) -> None:
            ReceiveOnly.received += len(packet.payload)

    cls = ReceiveOnly if mode.startswith("receive") else Recorder
    transport = "webrtc" if mode.endswith("webrtc") else "plain"
    batch = {"plain_batch_s": batch_s} if batch_s > 0 else {}  # 0: the recorder's default
    config = RecorderConfig(NODE, ROOM, f"rec-{mode}", mode, directory, transport=transport, **batch)
    recorder = cls(config, bus)
    await recorder.start()
    await asyncio.sleep(warmup)
    t0, c0 = time.monotonic(), cpu_seconds(os.getpid())
    b0 = recorder.progress().bytes
    await asyncio.sleep(window)
    t1, c1 = time.monotonic(), cpu_seconds(os.getpid())
    progress = recorder.progress()
    await recorder.close()
    await bus.close()
    written = progress.bytes - b0
    print(
        json.dumps(
            {
                "mode": mode,
                "cpu_seconds": round(c1 - c0, 3),
                "window_seconds": round(t1 - t0, 3),
                "cores": round((c1 - c0) / (t1 - t0), 4),
                "written_mbps": round(written * 8 / (t1 - t0) / 1e6, 3),
                "received_bytes": ReceiveOnly.received,
                "tracks": len(progress.tracks),
                "gaps": progress.gaps,
                "segments": count_segments(directory),
            }
        ),
        flush=True,
    )


# -- the recording work alone ----------------------------------------------------------------------


def pipeline_cores(media: Path, publishers: int, directory: Path, seconds: float = 30.0) -> dict[str, Any]:
    """CPU of depacketising + clock mapping + segment writing alone (no network), per media second:
    the same streams cut into RTP by aiortc's packetisers (tests/recorder/media.py) and fed in."""
    import av

    from recorder.writer import SegmentWriter, TrackInfo
    from tests.recorder.media import Encoded, FedTrack, feed, packetize

    by_kind: dict[str, list[Encoded]] = {"video": [], "audio": []}
    with av.open(str(media)) as container:
        for stream in (container.streams.video[0], container.streams.audio[0]):
            first = None
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    t = float(packet.pts * packet.time_base)
                    first = t if first is None else first
                    if t - first < seconds:
                        by_kind[stream.type].append(Encoded(bytes(packet), t - first, packet.is_keyframe))
    tracks: list[FedTrack] = []
    writer = SegmentWriter(directory, "pipeline")
    for i in range(publishers):
        tracks.append(FedTrack(f"p{i}:camera", "vp8", packetize("vp8", by_kind["video"])))
        tracks.append(FedTrack(f"p{i}:microphone", "opus", packetize("opus", by_kind["audio"], ts0=1000), ts0=1000))
        writer.add_track(TrackInfo(f"p{i}:camera", "video", "vp8"))
        writer.add_track(TrackInfo(f"p{i}:microphone", "audio", "opus"))
    packets = sum(len(t.packets) for t in tracks)
    c0 = time.process_time()
    feed(writer, tracks, time.time())
    writer.close()
    cpu = time.process_time() - c0
    return {"cores": round(cpu / seconds, 4), "us_per_packet": round(cpu / packets * 1e6, 1), "packets": packets}


# -- driver ---------------------------------------------------------------------------------------


def run_order(repeat: int) -> list[str]:
    """``repeat`` runs of the product's mode with the baselines between them (record, record-webrtc, record,
    receive-webrtc, record, ...): a single run is at the mercy of this VM's neighbours."""
    order = [MODES[0]]
    for baseline in MODES[1:]:
        order += [baseline, MODES[0]] if order.count(MODES[0]) < repeat else [baseline]
    return order + [MODES[0]] * (repeat - order.count(MODES[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["driver", "node", "recorder"], default="driver")
    parser.add_argument("--redis")
    parser.add_argument("--media", type=Path)
    parser.add_argument("--mode", choices=MODES, default="record")
    parser.add_argument("--directory", type=Path)
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument(
        "--batch-ms",
        type=float,
        default=0.0,
        help="how often the recorder reads its plain RTP socket (default: RecorderConfig.plain_batch_s)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of the recorder itself (the median is reported)")
    args = parser.parse_args()
    if args.role == "node":
        asyncio.run(run_node(args.redis, args.media, args.publishers))
        return
    if args.role == "recorder":
        asyncio.run(run_recorder(args.redis, args.mode, args.directory, args.warmup, args.window, args.batch_ms / 1000))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    redis = subprocess.Popen(
        [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    node: subprocess.Popen[str] | None = None
    try:
        time.sleep(0.5)
        # long enough for both runs (MediaPlayer does not loop pre-encoded files reliably)
        media = make_media(work / "pub.webm", int(len(run_order(args.repeat)) * (args.warmup + args.window + 5) + 20))
        me = [sys.executable, str(Path(__file__).resolve())]
        node = subprocess.Popen(
            [*me, "--role", "node", "--redis", url, "--media", str(media), "--publishers", str(args.publishers)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert node.stdout is not None
        if node.stdout.readline().strip() != "ready":
            sys.exit("node process failed to start")
        results: dict[str, Any] = {}
        runs: list[dict[str, Any]] = []
        for mode in run_order(args.repeat):
            out = subprocess.run(
                [
                    *me,
                    "--role",
                    "recorder",
                    "--redis",
                    url,
                    "--mode",
                    mode,
                    "--directory",
                    str(work / mode),
                    "--warmup",
                    str(args.warmup),
                    "--window",
                    str(args.window),
                    "--batch-ms",
                    str(args.batch_ms),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            if mode == MODES[0]:
                runs.append(results[mode])
        webrtc, receive = results["record-webrtc"], results["receive-webrtc"]
        record = sorted(runs, key=lambda r: float(r["cores"]))[len(runs) // 2]  # the median run
        pipeline = pipeline_cores(media, args.publishers, work / "pipeline")
        print(
            json.dumps(
                {
                    "benchmark": "recording",
                    "publishers": args.publishers,
                    "per_publisher": "VP8 640x360 30fps ~1 Mbit/s + Opus 32 kbit/s (pre-encoded)",
                    "window_seconds": args.window,
                    "cores_per_room_copy": record["cores"],
                    "cores_per_room_copy_runs": [r["cores"] for r in runs],
                    "target_cores": 0.02,
                    "meets_target": record["cores"] < 0.02,
                    "webrtc_record_cores": webrtc["cores"],
                    "ratio_plain_vs_webrtc": round(record["cores"] / webrtc["cores"], 3) if webrtc["cores"] else None,
                    "webrtc_receive_only_cores": receive["cores"],
                    "pipeline_only_cores": pipeline["cores"],
                    "pipeline_us_per_packet": pipeline["us_per_packet"],
                    "record": record,
                    "record_webrtc": webrtc,
                    "receive_webrtc": receive,
                    "cpu_count": os.cpu_count(),
                },
                indent=1,
            )
        )
    finally:
        if node is not None:
            node.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(10)
            if node.poll() is None:
                node.kill()
        redis.terminate()
        redis.wait(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
