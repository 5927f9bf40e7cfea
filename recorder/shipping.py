"""SegmentShipper: moves a recorder worker's finished segments from its local spool into the storage.

Used when the storage is not a local directory (S3): PyAV writes into the spool, and every segment the writer
completes (``seg-N.mkv`` renamed into place, then its sidecar ``seg-N.json``) is uploaded under the same key it
has below the spool (``<session>/<copy>/p<k>/seg-N.mkv``), media first and sidecar second, since a reader takes
the sidecar as the sign that its segment is whole. Both local files are deleted once both are stored.

Uploads run one at a time in the background, oldest first. A failed upload is retried with backoff (1 s, doubling
to ``retry_max``) and never drops the files; ``error`` says what the last attempt failed with (the worker reports
it, the coordinator raises ``recording_upload_failing``). A worker that starts on a spool that is not empty ships
what its previous process left first, including the ``.part`` and ``.open.json`` of a segment it was writing when
it died: the assembler salvages those like it does on a shared directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from pathlib import Path

from . import metrics
from .errors import StorageError
from .storage import Storage

logger = logging.getLogger(__name__)

Batch = tuple[Path, ...]
"""Files uploaded in this order, then deleted together."""


class SegmentShipper:
    def __init__(self, storage: Storage, spool: Path, *, retry_first: float = 1.0, retry_max: float = 30.0) -> None:
        self.storage = storage
        self.spool = spool
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._queue: list[Batch] = []
        self._wake = asyncio.Event()
        self._shipped = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(); ship() may come from other threads
        self._loop_thread = 0
        self.error: StorageError | None = None
        self.failing_since: float | None = None  # wall time of the first failure since the last success
        self.uploaded_bytes = 0
        self.uploads = 0

    def key(self, path: Path) -> str:
        return path.relative_to(self.spool).as_posix()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Queue what a previous process left in the spool, then start shipping."""
        self._queue.extend(leftovers(self.spool))
        if self._queue:
            logger.info("spool=%s: %d segment(s) left by a previous process, uploading", self.spool, len(self._queue))
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._run(), name=f"recorder-shipper:{self.spool}")
        self._wake.set()

    def ship(self, media: Path, sidecar: Path) -> None:
        """Queue a completed segment. Safe from any thread: the writer completes its last segments in a worker
        thread when a recording closes."""
        if self._loop is None or threading.get_ident() == self._loop_thread:
            self._enqueue((media, sidecar))
        else:
            self._loop.call_soon_threadsafe(self._enqueue, (media, sidecar))

    def _enqueue(self, batch: Batch) -> None:
        self._queue.append(batch)
        metrics.UPLOAD_BACKLOG.set(len(self._queue))
        self._wake.set()

    def pending(self, prefix: str) -> int:
        """Batches waiting whose keys start with ``prefix`` (a session or a copy directory)."""
        return sum(1 for batch in self._queue if self.key(batch[0]).startswith(prefix))

    def waiting(self) -> list[str]:
        """The keys of the segments waiting for upload, oldest first."""
        return [self.key(batch[0]) for batch in self._queue]

    async def flush(self, prefix: str, timeout: float | None) -> int:
        """Wait until nothing under ``prefix`` waits for upload, at most ``timeout`` s (None: as long as it takes);
        returns what is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._shipped:
                await self._shipped.wait_for(lambda: self.pending(prefix) == 0)
        return self.pending(prefix)

    async def close(self, timeout: float = 10.0) -> None:
        """Ship what is queued for at most ``timeout`` s; what is left stays in the spool for the next start."""
        if self._task is None:
            return
        left = await self.flush("", timeout)
        if left:
            logger.warning("spool=%s: %d segment(s) not uploaded yet, kept for the next start", self.spool, left)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        delay = self._retry_first
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue[0]
            try:
                await self._upload(batch)
            except Exception as exc:  # anything (also a spool file that cannot be read) is retried, never dropped
                if self.error is None:
                    self.failing_since = time.time()
                self.error = exc if isinstance(exc, StorageError) else StorageError(str(exc), path=batch[0], cause=exc)
                metrics.UPLOAD_FAILURES.inc()
                logger.error("spool=%s upload of %s failed (retry in %.0f s): %s", self.spool, batch[0], delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_first
            self.error = self.failing_since = None
            self._queue.pop(0)
            metrics.UPLOAD_BACKLOG.set(len(self._queue))
            async with self._shipped:
                self._shipped.notify_all()

    async def _upload(self, batch: Batch) -> None:
        for path in batch:
            if not path.exists():
                continue  # removed from the spool by someone else: nothing left to upload
            info = await self.storage.put(self.key(path), path)
            self.uploaded_bytes += info.size
            self.uploads += 1
            metrics.UPLOADS.inc()
            metrics.UPLOADED_BYTES.inc(info.size)
        for path in batch:
            path.unlink(missing_ok=True)
        directory = batch[0].parent
        with contextlib.suppress(OSError):  # not empty yet, or already gone
            while directory != self.spool and directory.is_relative_to(self.spool):
                directory.rmdir()
                directory = directory.parent


def leftovers(spool: Path) -> list[Batch]:
    """What a dead process left: complete segments (media + sidecar), and segments it was writing (``.part`` +
    ``.open.json``), in path order. Each sidecar names its media file."""
    found: list[Batch] = []
    if not spool.is_dir():
        return found
    for sidecar in sorted(spool.rglob("seg-*.json")):
        try:
            media = sidecar.with_name(str(json.loads(sidecar.read_text())["segment"]))
        except (OSError, ValueError, KeyError):
            logger.warning("spool=%s: %s is unreadable, left where it is", spool, sidecar)
            continue
        if sidecar.name.endswith(".open.json"):
            if sidecar.with_name(sidecar.name.replace(".open.json", ".json")).exists():
                continue  # completed: its .open.json outlived it by a crash between the two writes
            media = media.with_name(f"{media.name}.part")
        if media.exists():
            found.append((media, sidecar))
    return found
