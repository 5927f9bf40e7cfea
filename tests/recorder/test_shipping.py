"""SegmentShipper against a real S3 server (SeaweedFS): segments leave the spool only once stored, an outage keeps
them and says why, and a restarted worker ships what its previous process left (a killed writer's ``.part`` too)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from recorder.shipping import SegmentShipper, leftovers
from recorder.storage import S3Storage
from tests.classmesh.test_client import eventually
from tests.conftest import free_port
from tests.seaweed import SeaweedFS


def segment(spool: Path, copy: str, index: int, *, complete: bool = True) -> tuple[Path, Path]:
    """A segment as the writer leaves it: ``seg-N.mkv`` + ``seg-N.json``, or (not complete) what a killed writer
    leaves: ``seg-N.mkv.part`` + ``seg-N.open.json``."""
    directory = spool / "sess" / copy / "p0"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"seg-{index:06d}.mkv"
    media = directory / (name if complete else f"{name}.part")
    media.write_bytes(f"{copy}-{index}".encode() * 1000)
    sidecar = directory / (f"seg-{index:06d}.json" if complete else f"seg-{index:06d}.open.json")
    sidecar.write_text(json.dumps({"segment": name, "index": index}))
    return media, sidecar


async def test_a_shipped_segment_is_in_the_storage_and_gone_from_the_spool(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with S3Storage(seaweedfs.config()) as storage:
        shipper = SegmentShipper(storage, spool)
        shipper.start()
        pairs = [segment(spool, "a1", i) for i in (1, 2)]
        shipper.ship(*pairs[0])
        # the writer completes a recording's last segment in a worker thread
        await asyncio.to_thread(shipper.ship, *pairs[1])
        assert shipper.pending("sess/a1/") >= 1 and shipper.pending("sess/b1/") == 0
        assert await shipper.flush("sess/a1/", timeout=10) == 0
        keys = [info.key for info in await storage.list("sess/")]
        assert keys == [
            "sess/a1/p0/seg-000001.json",
            "sess/a1/p0/seg-000001.mkv",
            "sess/a1/p0/seg-000002.json",
            "sess/a1/p0/seg-000002.mkv",
        ]
        assert await storage.open("sess/a1/p0/seg-000002.mkv") == b"a1-2" * 1000
        assert not [p for p in spool.rglob("*") if p.is_file()]
        assert not (spool / "sess").exists()  # emptied directories go too
        assert shipper.error is None and shipper.uploads == 4
        await shipper.close()


async def test_an_outage_keeps_the_segments_and_a_restart_ships_them(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    dead = S3Storage(
        seaweedfs.config(endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout=0.5, max_attempts=1)
    )
    shipper = SegmentShipper(dead, spool, retry_first=0.1, retry_max=0.2)
    shipper.start()
    media, sidecar = segment(spool, "a1", 1)
    shipper.ship(media, sidecar)
    await eventually(lambda: shipper.error is not None, within=10)
    assert shipper.error is not None
    assert shipper.error.code == "storage_error" and "sess/a1/p0/seg-000001.mkv" in shipper.error.message
    assert shipper.failing_since is not None
    assert await shipper.flush("sess/", timeout=0.5) == 1  # still waiting, files kept
    await shipper.close(timeout=0.2)
    await dead.close()
    assert media.exists() and sidecar.exists()

    # the worker's next process on the same spool; its predecessor was also killed while writing segment 2
    part, open_sidecar = segment(spool, "a1", 2, complete=False)
    assert leftovers(spool) == [(media, sidecar), (part, open_sidecar)]
    async with S3Storage(seaweedfs.config()) as storage:
        again = SegmentShipper(storage, spool)
        again.start()
        assert await again.flush("", timeout=10) == 0
        keys = {info.key for info in await storage.list("sess/")}
        assert keys == {
            "sess/a1/p0/seg-000001.mkv",
            "sess/a1/p0/seg-000001.json",
            "sess/a1/p0/seg-000002.mkv.part",
            "sess/a1/p0/seg-000002.open.json",
        }
        assert again.error is None and again.failing_since is None
        await again.close()
    assert not [p for p in spool.rglob("*") if p.is_file()]


def test_leftovers_skip_an_unreadable_sidecar_and_a_sidecar_without_media(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    good = segment(spool, "a1", 1)
    media, _ = segment(spool, "a1", 2)
    media.unlink()  # sidecar only: nothing to ship
    broken = spool / "sess" / "a1" / "p0" / "seg-000003.json"
    broken.write_text("{not json")
    assert leftovers(spool) == [good]
    assert leftovers(tmp_path / "missing") == []
