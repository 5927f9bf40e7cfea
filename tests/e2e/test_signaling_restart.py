"""Restarting signaling during a class: browsers resume their sessions on the new process, and media, which never
passes through signaling, keeps flowing. The longest freeze is measured frame by frame."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import OpenPage
from tests.e2e.test_classroom import joined, media_flowing
from tests.e2e.test_drain import freezes
from tests.multiproc import Fleet

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]


async def test_restarting_signaling_keeps_media_flowing(tmp_path: Path, redis_server: Any, open_page: OpenPage) -> None:
    fleet = Fleet(tmp_path, redis_server.url, {"eu-central": ["eu-1"]})
    try:
        fleet.start_all()
        await fleet.wait_nodes(1)
        pages = []
        for name in ("Ana", "Ben", "Cleo"):
            page, _ = await open_page(fleet.join_url("steady", name))
            pages.append(page)
        ids = [await joined(p) for p in pages]
        for page, me in zip(pages, ids, strict=True):
            await media_flowing(page, set(ids) - {me})
        # the same window without a restart, for comparison: what this machine's rendering jitter is anyway
        for page in pages:
            await page.evaluate("window.classmesh.resetFrameGaps()")
        await asyncio.sleep(3.0)
        baseline = await freezes(pages)
        for page in pages:
            await page.evaluate("window.classmesh.resetFrameGaps()")
        # a rolling restart of signaling: the old process stops (its sessions stay in Redis), a new one starts
        old = fleet.procs["signaling"]
        assert old.stop() == 0
        fleet.start_signaling().wait_ready()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [await p.evaluate("window.classmesh.state") for p in pages]
            if states == ["joined"] * 3:
                break
            await asyncio.sleep(0.1)
        assert states == ["joined"] * 3
        for page in pages:  # resumed, not re-joined: same participant, no new peer connections
            assert await page.evaluate("window.classmesh.participantId") in ids
            assert await page.evaluate("window.classmesh.moves") == 0
        await asyncio.sleep(1.0)
        for page, me in zip(pages, ids, strict=True):
            await media_flowing(page, set(ids) - {me})
        gaps = await freezes(pages)
        print(f"\nsignaling restart: longest freeze per participant (ms): {gaps}; same window without: {baseline}")
        assert max(gaps) <= 300  # media never passed through signaling; a frame or two of jitter at most
    finally:
        fleet.stop_all()
