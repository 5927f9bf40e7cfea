"""Join latency: from the moment a Chromium page starts loading a join link to the first decoded frame of a
remote participant's video, over N joins into a room where one participant is already publishing.

The baseline in the same run is the same page's first frame of its *own* camera (getUserMedia, no network):
the ratio says how much the join itself (signaling, placement, ICE, DTLS, keyframe) adds on this machine.
``connected_to_first_remote_frame_ms`` splits off the wait for a keyframe once the page's connection is up, and
``node`` says how many joins started on a replayed keyframe and how fast the publisher answered keyframe requests.

    .venv/bin/python bench/join_latency.py --joins 20

By default the stack runs as it is deployed: ``classmesh orchestrator``, ``signaling`` and ``media`` processes
on a redis-server (the same start-up as bench/sfu_capacity.py's classmesh target; ``--workers`` sets the media
node's forwarding workers). ``--stack in-process`` runs it in this process instead, as ``classmesh dev`` does,
on the same event loop as the bench's own Playwright client.

Prints one JSON object. Run it inside a network namespace with only `lo`, as `make test` does, or Chromium may
pick the machine's LAN address for ICE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from playwright.async_api import async_playwright
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen.targets import ClassmeshTarget
from classmesh.dev import build_stack
from core.bus import LocalBus
from core.regions import load_regions, parse_regions
from core.tokens import TokenIssuer
from media.forwarding import configure_ice
from tests.conftest import free_port
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def node_figures(media: str) -> dict[str, Any]:
    """The media node's own view, from its /metrics: how many new video outputs started from a replayed
    keyframe, how many keyframe requests went to the publisher, and how long its keyframes took to come."""
    async with aiohttp.ClientSession() as http, http.get(f"{media}/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    answered = values.get("classmesh_media_keyframe_response_seconds_count", 0.0)
    waited = values.get("classmesh_media_keyframe_response_seconds_sum", 0.0)
    return {
        "keyframe_replays": values.get("classmesh_media_keyframe_replays_total", 0.0),
        "plis_sent": values.get("classmesh_media_plis_sent_total", 0.0),
        "keyframe_response_ms_mean": round(waited / answered * 1000, 1) if answered else None,
    }


@dataclass
class Stack:
    signaling: str  # the signaling service's http URL: pages load /room/<room> from it
    media: str  # the media node's http URL (its /metrics)
    room: str
    token: Callable[[str, str, str], str]  # (identity, name, role) -> a join token for ``room``


@asynccontextmanager
async def processes(workers: int) -> AsyncIterator[Stack]:
    target = ClassmeshTarget(workers)
    try:
        endpoint = await target.start(publishers=1, audio=True)
        issuer = TokenIssuer.from_file(Path(endpoint.extra["private_key"]))
        room, region = endpoint.rooms[0], endpoint.extra["region"]

        def token(identity: str, name: str, role: str) -> str:
            return issuer.mint(room=room, identity=identity, name=name, role=role, region=region)

        yield Stack(endpoint.extra["signaling"], endpoint.extra["media"], room, token)
    finally:
        await target.stop()


@asynccontextmanager
async def in_process() -> AsyncIterator[Stack]:
    configure_ice(["127.0.0.1"])
    base = load_regions().get("eu-central")
    raw = {
        "regions": {
            "eu-central": {
                "display_name": "bench",
                "lat": base.lat,
                "lon": base.lon,
                "nodes": [{"id": "eu-1", "port": free_port()}],
            }
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        stack = build_stack(
            parse_regions(raw),
            data_dir=Path(tmp),
            host="127.0.0.1",
            base_port=free_port(),
            version="bench",
            bus=LocalBus(),
            recorders=0,
        )
        try:
            for host in stack.hosts:
                if host.service.name != "media":
                    host.port = 0
                await host.start()
            signaling = next(h for h in stack.hosts if h.service.name == "signaling")
            media = next(h for h in stack.hosts if h.service.name == "media")
            registry = next(h for h in stack.hosts if h.service.name == "orchestrator").service.registry  # type: ignore[attr-defined]
            await registry.wait_for(lambda r: any(n.serving for n in r.nodes("media")), 5)

            def token(identity: str, name: str, role: str) -> str:
                return stack.issuer.mint(room="bench", identity=identity, name=name, role=role)

            yield Stack(signaling.url, media.url, "bench", token)
        finally:
            for host in reversed(stack.hosts):
                await host.close()
            await stack.bus.close()


async def main(joins: int, stack_kind: str, workers: int) -> dict[str, Any]:
    remote: list[float] = []
    local: list[float] = []
    steps: dict[str, list[float]] = {}  # page event -> ms since the page started loading, per join
    after_connect: list[float] = []  # the page's subscriber connection up -> first remote frame
    started = processes(workers) if stack_kind == "processes" else in_process()
    async with started as stack, async_playwright() as pw:
        room_url = f"{stack.signaling}/room/{stack.room}"
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        host_ctx = await browser.new_context(bypass_csp=True)
        teacher = await host_ctx.new_page()
        await teacher.goto(f"{room_url}?token={stack.token('teacher', 'Teacher', 'instructor')}")
        await teacher.wait_for_function("window.classmesh && window.classmesh.state === 'joined'")
        await asyncio.sleep(2.0)
        for i in range(joins):
            ctx = await browser.new_context(bypass_csp=True)
            page = await ctx.new_page()
            await page.goto(f"{room_url}?token={stack.token(f's{i}', f'S{i}', 'student')}")
            handle = await page.wait_for_function(
                """() => {
                    const g = window.classmesh && window.classmesh.frameGaps();
                    const remote = g && Object.entries(g)
                        .find(([k, v]) => !k.startsWith('local') && v.firstFrameMs);
                    return remote ? remote[1].firstFrameMs : null;
                }""",
                timeout=20_000,
                polling=10,
            )
            remote.append(float(await handle.json_value()))
            own = await page.wait_for_function(  # the baseline; it may come after the remote frame
                "(() => { const g = window.classmesh.frameGaps()['local:camera']; "
                "return g ? g.firstFrameMs : null; })()",
                timeout=20_000,
                polling=10,
            )
            local.append(float(await own.json_value()))
            nav = await page.evaluate(
                "(() => { const n = performance.getEntriesByType('navigation')[0];"
                " return {'page response': n.responseEnd, 'page parsed': n.domInteractive}; })()"
            )
            for text, ms in nav.items():
                steps.setdefault(text, []).append(float(ms))
            events = await page.evaluate("window.classmesh.events")
            for event in events:
                steps.setdefault(event["text"], []).append(float(event["ms"]))
            connected = [float(e["ms"]) for e in events if e["text"] == "subscriber connected"]
            if connected:
                after_connect.append(remote[-1] - connected[0])
            await page.evaluate("window.classmesh.leave()")
            await ctx.close()
        await host_ctx.close()
        await browser.close()
        node = await node_figures(stack.media)
    return {
        "benchmark": "join_latency",
        "joins": joins,
        "first_remote_frame_ms": {
            "p50": statistics.median(remote),
            "p95": percentile(remote, 0.95),
            "max": max(remote),
            "all": [round(v) for v in remote],
        },
        "connected_to_first_remote_frame_ms": {
            "p50": statistics.median(after_connect) if after_connect else None,
            "all": [round(v) for v in after_connect],
        },
        "stack": stack_kind if stack_kind == "in-process" else f"processes, {workers} media worker(s)",
        "node": node,
        "timeline_p50_ms": dict(
            sorted(
                ((text, statistics.median(ms)) for text, ms in steps.items() if len(ms) >= joins / 2),
                key=lambda item: item[1],
            )
        ),
        "baseline_first_local_frame_ms": {"p50": statistics.median(local) if local else None},
        "ratio_remote_to_local_p50": round(statistics.median(remote) / statistics.median(local), 2) if local else None,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument(
        "--stack",
        choices=("processes", "in-process"),
        default="processes",
        help="one process per service on redis, as deployed (default), or everything in this process",
    )
    parser.add_argument("--workers", type=int, default=1, help="the media node's forwarding workers (processes)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.joins, args.stack, args.workers)), indent=1))
