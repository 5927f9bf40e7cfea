"""Where finished segments and recordings are kept.

``Storage`` is the seam: keys are ``/``-separated relative paths (``<recording>/<copy>/seg-000001.mkv``).
``LocalStorage`` (the default) keeps them under a directory; every ``put`` is atomic (temporary
file, fsync, rename, fsync of the directory) so a crash never leaves a half-written object under
its final key. ``S3Storage`` is a documented stub: the S3-compatible backend is not built yet.

The segment writer itself always writes to a local spool directory (PyAV needs a seekable file);
with ``LocalStorage`` the spool *is* the storage root and nothing is copied.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from .errors import SegmentNotFoundError, storage_error


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: float


class Storage(Protocol):
    async def put(self, key: str, data: bytes | Path) -> ObjectInfo: ...

    async def open(self, key: str) -> bytes: ...

    async def read_range(self, key: str, start: int, end: int) -> bytes: ...

    async def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    async def stat(self, key: str) -> ObjectInfo: ...

    async def delete(self, key: str) -> bool: ...


def _check_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        raise ValueError(f"invalid storage key {key!r}")
    return path


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error("writing", path, exc) from exc


class LocalStorage:
    """Objects as files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).parts)

    def _info(self, key: str, path: Path) -> ObjectInfo:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise SegmentNotFoundError(f"no object {key!r}", path=path) from None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def _put(self, key: str, data: bytes | Path) -> ObjectInfo:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error("creating directory for", target, exc) from exc
        if isinstance(data, Path):
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                with open(data, "rb") as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.replace(tmp, target)
                fsync_directory(target.parent)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise storage_error("copying into", target, exc) from exc
        else:
            atomic_write(target, data)
        return self._info(key, target)

    async def put(self, key: str, data: bytes | Path) -> ObjectInfo:
        return await asyncio.to_thread(self._put, key, data)

    async def open(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise SegmentNotFoundError(f"no object {key!r}", path=path) from None
        except OSError as exc:
            raise storage_error("reading", path, exc) from exc

    def _read_range(self, path: Path, start: int, end: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object (shorter at its end)."""
        if start < 0 or end < start:
            raise ValueError(f"invalid range {start}-{end}")
        path = self.path(key)
        try:
            return await asyncio.to_thread(self._read_range, path, start, end)
        except FileNotFoundError:
            raise SegmentNotFoundError(f"no object {key!r}", path=path) from None
        except OSError as exc:
            raise storage_error("reading", path, exc) from exc

    def _list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        if not self.root.exists():
            return out
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.name.endswith(".part"):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                out.append(self._info(key, path))
        return out

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    async def stat(self, key: str) -> ObjectInfo:
        return self._info(key, self.path(key))

    async def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error("deleting", path, exc) from exc
        return True


class S3Storage:
    """S3-compatible object storage: NOT IMPLEMENTED yet (every method raises NotImplementedError).

    The plan (docs/recording.md): segments are spooled locally by the writer and uploaded with
    ``put`` once complete (SigV4-signed aiohttp PUT, multipart above 64 MiB); range reads use the
    ``Range`` header. Until then configure ``LocalStorage`` (e.g. on a mounted volume).
    """

    def __init__(self, endpoint: str, bucket: str, *, region: str = "us-east-1") -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region

    async def put(self, key: str, data: bytes | Path) -> ObjectInfo:
        raise NotImplementedError("S3Storage.put")

    async def open(self, key: str) -> bytes:
        raise NotImplementedError("S3Storage.open")

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        raise NotImplementedError("S3Storage.read_range")

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        raise NotImplementedError("S3Storage.list")

    async def stat(self, key: str) -> ObjectInfo:
        raise NotImplementedError("S3Storage.stat")

    async def delete(self, key: str) -> bool:
        raise NotImplementedError("S3Storage.delete")
