"""Where finished segments and recordings are kept.

``Storage`` is the seam: keys are ``/``-separated relative paths (``<recording>/<copy>/seg-000001.mkv``).
``LocalStorage`` (the default) keeps them under a directory; every ``put`` is atomic (temporary
file, fsync, rename, fsync of the directory) so a crash never leaves a half-written object under
its final key. ``S3Storage`` keeps them in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS, ...)
through aiobotocore: single PUTs up to a threshold, multipart uploads above it (aborted on failure),
``Range`` GETs, paginated listings. Both pass one contract suite (``tests/recorder/test_storage.py``).
``storage_from_url`` picks one from a URL (``file:///...``, a plain path, or ``s3://bucket/prefix?...``).

The segment writer itself always writes to a local spool directory (PyAV needs a seekable file);
with ``LocalStorage`` the spool *is* the storage root and nothing is copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from .errors import SegmentNotFoundError, StorageError, StorageFullError, storage_error

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: float
    etag: str | None = None
    """The S3 entity tag (without quotes); ``None`` for local files."""


class Storage(Protocol):
    async def put(self, key: str, data: bytes | Path) -> ObjectInfo: ...

    async def open(self, key: str) -> bytes: ...

    async def read_range(self, key: str, start: int, end: int) -> bytes: ...

    async def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    async def stat(self, key: str) -> ObjectInfo: ...

    async def delete(self, key: str) -> bool: ...

    async def close(self) -> None: ...


def _check_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    # str(path) != key: PurePosixPath folds "a//b", "a/" and "./a" into another key; refuse them so that
    # every backend (a directory tree, an S3 bucket) maps one key string to one object.
    if not key or path.is_absolute() or str(path) != key or any(part in ("", ".", "..") for part in path.parts):
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
                raise storage_error(f"copying {data} into", target, exc) from exc
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
        # By key string, like S3 (path order would put "a/b" before "a-c").
        out.sort(key=lambda info: info.key)
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

    async def close(self) -> None:
        """Nothing to release; here so that every ``Storage`` closes the same way."""


MiB = 1 << 20
S3_MIN_PART_SIZE = 5 * MiB
"""S3's smallest part (every part but the last)."""
S3_MAX_PARTS = 10_000
DEFAULT_MULTIPART_THRESHOLD = 64 * MiB
DEFAULT_PART_SIZE = 16 * MiB

# Error codes S3-compatible servers use when an object cannot be stored for lack of room or quota.
_FULL_CODES = frozenset(
    {
        "EntityTooLarge",
        "QuotaExceeded",
        "StorageFull",
        "InsufficientStorage",
        "XMinioStorageFull",
        "XMinioAdminBucketQuotaExceeded",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# What a request can fail with besides an S3 error answer: no connection, a timeout, a broken stream.
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError)


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where and how ``S3Storage`` keeps objects. The credentials never appear in ``repr`` or logs."""

    bucket: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    endpoint_url: str | None = None
    """``http(s)://host:port`` of an S3-compatible server; ``None`` is AWS's endpoint for ``region``."""
    prefix: str = ""
    """Keys are stored as ``<prefix>/<key>``."""
    region: str = "us-east-1"
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    """Objects larger than this are uploaded in parts."""
    part_size: int = DEFAULT_PART_SIZE
    page_size: int = 1000
    """Keys per ListObjectsV2 request (S3's own maximum is 1000)."""
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3
    """Attempts per request, the first included (botocore's "standard" retry mode)."""

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("S3 bucket must not be empty")
        if not self.access_key_id or not self.secret_access_key:
            raise ValueError("S3 access key id and secret access key must both be set")
        if self.prefix:
            _check_key(self.prefix)
        if self.endpoint_url is not None:
            endpoint = urlsplit(self.endpoint_url)
            if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
                raise ValueError(f"S3 endpoint must be an http(s)://host[:port] URL, got {self.endpoint_url!r}")
        if self.addressing_style not in ("path", "virtual", "auto"):
            raise ValueError(f"S3 addressing style must be path, virtual or auto, got {self.addressing_style!r}")
        if self.part_size < S3_MIN_PART_SIZE:
            raise ValueError(f"S3 part size must be at least {S3_MIN_PART_SIZE} bytes, got {self.part_size}")
        if self.multipart_threshold < self.part_size:
            raise ValueError(
                f"S3 multipart threshold ({self.multipart_threshold}) must not be below"
                f" the part size ({self.part_size})"
            )
        if not 1 <= self.page_size <= 1000:
            raise ValueError(f"S3 page size must be 1-1000, got {self.page_size}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("S3 timeouts must be positive")
        if self.max_attempts < 1:
            raise ValueError(f"S3 max attempts must be at least 1, got {self.max_attempts}")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def _no_expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Drop botocore's ``Expect: 100-continue``: aiohttp waits for the ``100 Continue`` with no timeout, so a
    server that accepts the connection and never answers would hang a PUT for ever."""
    params.get("headers", {}).pop("Expect", None)


def _etag(value: Any) -> str | None:
    return value.strip('"') if isinstance(value, str) else None


class S3Storage:
    """Objects in an S3-compatible bucket, under ``config.prefix``.

    States: unopened -> open (the aiobotocore client is made on the first request) -> closed
    (``close()``, idempotent; requests after it raise ``StorageError``).

    ``put`` sends one PutObject up to ``multipart_threshold`` bytes and a multipart upload above it,
    reading a file ``part_size`` bytes at a time (the parts grow when a file would need more than
    10,000); a multipart upload that fails or is cancelled is aborted, so no parts are left behind.
    S3 makes an object visible only once it is complete, so a put is atomic like ``LocalStorage``'s.
    Every error is a ``StorageError`` naming the key: ``SegmentNotFoundError`` for a missing key,
    ``StorageFullError`` when the server refuses for size or quota, ``StorageError`` otherwise (also
    for a server that is down or does not answer within the configured timeouts).
    """

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self._base = f"{config.prefix}/" if config.prefix else ""
        self._client: Any = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"S3Storage({self.config!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    def location(self, key: str = "") -> str:
        """``s3://bucket/prefix/key``, as error messages and ``StorageError.path`` show it."""
        return f"s3://{self.config.bucket}/{self._base}{key}"

    def _object_key(self, key: str) -> str:
        return self._base + _check_key(key).as_posix()

    async def _s3(self) -> Any:
        if self._closed:
            raise StorageError(f"S3 storage {self.location()} is closed", path=self.location())
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    # imported here: a recorder on LocalStorage does not pay for botocore's session machinery
                    from aiobotocore.config import AioConfig
                    from aiobotocore.session import get_session

                    cfg = self.config
                    config = AioConfig(
                        signature_version="s3v4",
                        s3={"addressing_style": cfg.addressing_style},
                        connect_timeout=cfg.connect_timeout,
                        read_timeout=cfg.read_timeout,
                        retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                        # Checksums only where S3 requires them: many S3-compatible servers do not
                        # understand the CRC trailers newer botocore sends by default.
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    )
                    stack = contextlib.AsyncExitStack()
                    self._client = await stack.enter_async_context(
                        get_session().create_client(
                            "s3",
                            endpoint_url=cfg.endpoint_url,
                            region_name=cfg.region,
                            aws_access_key_id=cfg.access_key_id,
                            aws_secret_access_key=cfg.secret_access_key,
                            config=config,
                        )
                    )
                    self._client.meta.events.register_last("before-call.s3", _no_expect_continue)
                    self._exit_stack = stack
                    logger.info(
                        "s3 storage opened endpoint=%s bucket=%s prefix=%s region=%s addressing=%s",
                        cfg.endpoint_url or "aws",
                        cfg.bucket,
                        cfg.prefix or "-",
                        cfg.region,
                        cfg.addressing_style,
                    )
        return self._client

    async def close(self) -> None:
        """Close the HTTP connections; idempotent."""
        self._closed = True
        async with self._lock:
            stack, self._exit_stack, self._client = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> S3Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- errors -------------------------------------------------------------------------------

    def _client_error(self, action: str, key: str, exc: ClientError) -> StorageError:
        code = _error_code(exc)
        location = self.location(key)
        if code in _NOT_FOUND_CODES:
            return SegmentNotFoundError(f"no object {key!r}", path=location, cause=exc)
        message = exc.response.get("Error", {}).get("Message") or "no message"
        text = f"{action} {key!r} at {location}: {code or _http_status(exc)} {message}"
        cls = StorageFullError if code in _FULL_CODES or _http_status(exc) == 507 else StorageError
        return cls(text, path=location, cause=exc)

    @contextlib.contextmanager
    def _translated(self, action: str, key: str) -> Iterator[None]:
        """Turn what botocore and aiohttp raise inside the block into the recorder's storage errors."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(action, key, exc) from exc
        except _TRANSPORT_ERRORS as exc:
            location = self.location(key)
            reason = str(exc) or type(exc).__name__
            raise StorageError(f"{action} {key!r} at {location}: {reason}", path=location, cause=exc) from exc

    async def _missing(self, key: str, exc: ClientError) -> StorageError:
        """A HEAD answered 404, which S3 also answers for a missing bucket: tell the two apart."""
        s3 = await self._s3()
        with self._translated("checking the bucket of", key):
            try:
                await s3.head_bucket(Bucket=self.config.bucket)
            except ClientError as bucket_exc:
                if _http_status(bucket_exc) != 404:
                    raise
                location = self.location(key)
                return StorageError(
                    f"reading {key!r} at {location}: bucket {self.config.bucket!r} does not exist",
                    path=location,
                    cause=bucket_exc,
                )
        return SegmentNotFoundError(f"no object {key!r}", path=self.location(key), cause=exc)

    # -- the Storage protocol -----------------------------------------------------------------

    async def put(self, key: str, data: bytes | Path) -> ObjectInfo:
        object_key = self._object_key(key)
        if isinstance(data, Path):
            try:
                size = (await asyncio.to_thread(data.stat)).st_size
            except OSError as exc:
                raise storage_error(f"uploading {key!r} from", data, exc) from exc
            if size > self.config.multipart_threshold:
                await self._put_multipart(key, self._file_parts(key, data, size))
            else:
                try:
                    body = await asyncio.to_thread(data.read_bytes)
                except OSError as exc:
                    raise storage_error(f"uploading {key!r} from", data, exc) from exc
                size = len(body)
                await self._put_single(key, object_key, body)
        else:
            size = len(data)
            if size > self.config.multipart_threshold:
                await self._put_multipart(key, self._bytes_parts(data))
            else:
                await self._put_single(key, object_key, bytes(data))
        info = await self.stat(key)
        if info.size != size:
            location = self.location(key)
            raise StorageError(f"uploading {key!r} to {location}: stored {info.size} bytes of {size}", path=location)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("s3 put key=%s bytes=%d etag=%s", key, size, info.etag)
        return info

    async def _put_single(self, key: str, object_key: str, body: bytes) -> None:
        s3 = await self._s3()
        with self._translated("uploading", key):
            await s3.put_object(Bucket=self.config.bucket, Key=object_key, Body=body)

    def _part_size(self, size: int) -> int:
        """``config.part_size``, or larger (whole MiB) when the object would need more than 10,000 parts."""
        needed = math.ceil(size / S3_MAX_PARTS)
        return max(self.config.part_size, math.ceil(needed / MiB) * MiB)

    async def _bytes_parts(self, data: bytes) -> AsyncIterator[bytes]:
        step = self._part_size(len(data))
        view = memoryview(data)
        for offset in range(0, len(data), step):
            yield bytes(view[offset : offset + step])

    async def _file_parts(self, key: str, path: Path, size: int) -> AsyncIterator[bytes]:
        """The file in parts, read in a thread; a file that changes size while it is read is an error."""
        step = self._part_size(size)
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except OSError as exc:
            raise storage_error(f"uploading {key!r} from", path, exc) from exc
        try:
            sent = 0
            while True:
                try:
                    chunk = await asyncio.to_thread(fh.read, step)
                except OSError as exc:
                    raise storage_error(f"uploading {key!r} from", path, exc) from exc
                if not chunk:
                    break
                sent += len(chunk)
                if sent > size:
                    break
                yield chunk
            if sent != size:
                raise StorageError(
                    f"uploading {key!r} from {path}: the file changed size while it was read ({size} bytes expected)",
                    path=path,
                )
        finally:
            fh.close()

    async def _put_multipart(self, key: str, parts: AsyncIterator[bytes]) -> None:
        """Upload ``parts`` as one object; on any failure (cancellation included) abort the upload."""
        object_key = self._object_key(key)
        bucket = self.config.bucket
        s3 = await self._s3()
        with self._translated("starting the multipart upload of", key):
            upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=object_key))["UploadId"]
        done: list[dict[str, Any]] = []
        try:
            with self._translated("uploading", key):
                async for chunk in parts:
                    number = len(done) + 1
                    answer = await s3.upload_part(
                        Bucket=bucket, Key=object_key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )
                    done.append({"ETag": answer["ETag"], "PartNumber": number})
                await s3.complete_multipart_upload(
                    Bucket=bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": done}
                )
        except BaseException as exc:
            reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else exc
            logger.warning("s3 multipart upload aborting key=%s parts_sent=%d reason=%s", key, len(done), reason)
            await self._abort(s3, key, object_key, upload_id)
            raise
        finally:
            aclose = getattr(parts, "aclose", None)
            if aclose is not None:
                await aclose()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("s3 multipart upload done key=%s parts=%d", key, len(done))

    async def _abort(self, s3: Any, key: str, object_key: str, upload_id: str) -> None:
        try:
            await s3.abort_multipart_upload(Bucket=self.config.bucket, Key=object_key, UploadId=upload_id)
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            # The upload stays on the server until a lifecycle rule removes it; say so, keep the first error.
            logger.error("s3 multipart abort failed key=%s upload_id=%s: %s", key, upload_id, exc)

    async def open(self, key: str) -> bytes:
        object_key = self._object_key(key)
        s3 = await self._s3()
        with self._translated("reading", key):
            answer = await s3.get_object(Bucket=self.config.bucket, Key=object_key)
            async with answer["Body"] as body:
                data: bytes = await body.read()
                return data

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object (shorter at its end), like ``LocalStorage.read_range``."""
        if start < 0 or end < start:
            raise ValueError(f"invalid range {start}-{end}")
        object_key = self._object_key(key)
        if start == end:
            await self.stat(key)  # an empty range has no Range header, but a missing key is still an error
            return b""
        s3 = await self._s3()
        with self._translated("reading", key):
            try:
                answer = await s3.get_object(
                    Bucket=self.config.bucket, Key=object_key, Range=f"bytes={start}-{end - 1}"
                )
            except ClientError as exc:
                if _error_code(exc) == "InvalidRange" or _http_status(exc) == 416:
                    return b""  # the object exists (else NoSuchKey) and starts before `start`
                raise
            async with answer["Body"] as body:
                data: bytes = await body.read()
                return data

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects whose key starts with ``prefix``, sorted by key; follows continuation tokens."""
        s3 = await self._s3()
        params: dict[str, Any] = {
            "Bucket": self.config.bucket,
            "Prefix": self._base + prefix,
            "MaxKeys": self.config.page_size,
        }
        out: list[ObjectInfo] = []
        pages = 0
        while True:
            with self._translated("listing", prefix):
                page = await s3.list_objects_v2(**params)
            pages += 1
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(self._base) :]
                try:
                    _check_key(key)
                except ValueError:
                    logger.debug("s3 list skips key=%r (not a storage key)", key)
                    continue
                out.append(
                    ObjectInfo(key, int(item["Size"]), item["LastModified"].timestamp(), _etag(item.get("ETag")))
                )
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not token:
                location = self.location(prefix)
                raise StorageError(f"listing {prefix!r} at {location}: truncated page without a token", path=location)
            params["ContinuationToken"] = token
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("s3 list prefix=%r objects=%d pages=%d", prefix, len(out), pages)
        out.sort(key=lambda info: info.key)
        return out

    async def stat(self, key: str) -> ObjectInfo:
        object_key = self._object_key(key)
        s3 = await self._s3()
        with self._translated("reading", key):
            try:
                head = await s3.head_object(Bucket=self.config.bucket, Key=object_key)
            except ClientError as exc:
                if _http_status(exc) != 404:
                    raise
                raise await self._missing(key, exc) from exc
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp(), _etag(head.get("ETag")))

    async def delete(self, key: str) -> bool:
        """Delete ``key``; ``False`` when there was nothing to delete (a HEAD first: S3's DELETE does not say)."""
        try:
            await self.stat(key)
        except SegmentNotFoundError:
            return False
        s3 = await self._s3()
        with self._translated("deleting", key):
            await s3.delete_object(Bucket=self.config.bucket, Key=self._object_key(key))
        return True


# -- choosing a storage from a URL ---------------------------------------------------------------

S3_ENV_ACCESS_KEY_ID = "CLASSMESH_S3_ACCESS_KEY_ID"
S3_ENV_SECRET_ACCESS_KEY = "CLASSMESH_S3_SECRET_ACCESS_KEY"
S3_ENV_ENDPOINT = "CLASSMESH_S3_ENDPOINT"
S3_ENV_REGION = "CLASSMESH_S3_REGION"
_ADDRESSING: dict[str, Literal["path", "virtual", "auto"]] = {"path": "path", "virtual": "virtual", "auto": "auto"}
_S3_QUERY = ("endpoint", "region", "addressing", "connect_timeout", "read_timeout", "max_attempts", "page_size")


def s3_config_from_url(url: str, environ: Mapping[str, str] | None = None) -> S3Config:
    """``s3://bucket/prefix?endpoint=http://host:port&region=...`` plus credentials from ``environ``.

    Query options: ``endpoint``, ``region``, ``addressing`` (path, virtual, auto), ``connect_timeout``,
    ``read_timeout`` (seconds), ``max_attempts``, ``page_size``. ``endpoint`` and ``region`` default
    to ``CLASSMESH_S3_ENDPOINT`` and ``CLASSMESH_S3_REGION``; the credentials come only from
    ``CLASSMESH_S3_ACCESS_KEY_ID`` and ``CLASSMESH_S3_SECRET_ACCESS_KEY``, never from the URL.
    """
    environ = os.environ if environ is None else environ
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"not an s3:// URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"put no credentials in the storage URL; set {S3_ENV_ACCESS_KEY_ID}/{S3_ENV_SECRET_ACCESS_KEY}"
        )
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"storage URL {url!r} names no bucket (s3://bucket/prefix)")
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)):
        if name not in _S3_QUERY:
            raise ValueError(f"storage URL option {name!r} is unknown (known: {', '.join(_S3_QUERY)})")
        if name in query:
            raise ValueError(f"storage URL option {name!r} is given twice")
        query[name] = value
    access_key_id = environ.get(S3_ENV_ACCESS_KEY_ID, "")
    secret_access_key = environ.get(S3_ENV_SECRET_ACCESS_KEY, "")
    if not access_key_id or not secret_access_key:
        raise ValueError(f"S3 storage needs {S3_ENV_ACCESS_KEY_ID} and {S3_ENV_SECRET_ACCESS_KEY} in the environment")
    addressing = _ADDRESSING.get(query.get("addressing", "path"))
    if addressing is None:
        raise ValueError(f"storage URL option addressing must be path, virtual or auto, got {query['addressing']!r}")
    options: dict[str, Any] = {}
    for name, kind in (("connect_timeout", float), ("read_timeout", float), ("max_attempts", int), ("page_size", int)):
        if name in query:
            try:
                options[name] = kind(query[name])
            except ValueError:
                raise ValueError(f"storage URL option {name} must be a number, got {query[name]!r}") from None
    return S3Config(
        bucket=bucket,
        prefix=unquote(parts.path).strip("/"),
        endpoint_url=query.get("endpoint") or environ.get(S3_ENV_ENDPOINT) or None,
        region=query.get("region") or environ.get(S3_ENV_REGION) or "us-east-1",
        addressing_style=addressing,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        **options,
    )


def storage_from_url(url: str, environ: Mapping[str, str] | None = None) -> Storage:
    """The storage a URL names: ``file:///abs/path`` or a plain path -> ``LocalStorage``; ``s3://...`` -> ``S3Storage``.

    Called once at start-up by whoever builds the recorder (``environ`` defaults to ``os.environ``,
    read here and nowhere deeper). Raises ``ValueError`` with the reason for a URL it cannot use.
    """
    if not url:
        raise ValueError("storage URL is empty")
    if "://" not in url:
        return LocalStorage(Path(url))
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        return S3Storage(s3_config_from_url(url, environ))
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {url!r} names a host; use file:///absolute/path")
        if parts.query or parts.fragment:
            raise ValueError(f"file URL {url!r} takes no query or fragment")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file URL {url!r} needs an absolute path (file:///absolute/path)")
        return LocalStorage(Path(path))
    raise ValueError(f"storage URL scheme {scheme!r} is not supported (use a path, file:///path or s3://bucket/prefix)")


async def download(
    storage: Storage, prefix: str, into: Path, *, skip: Callable[[str], bool] = lambda key: False
) -> int:
    """Copy every object under ``prefix`` to ``into`` (its key below the prefix as the relative path), except those
    ``skip`` names; returns the bytes copied."""
    total = 0
    for info in await storage.list(prefix):
        if skip(info.key):
            continue
        target = into.joinpath(*_check_key(info.key[len(prefix) :].lstrip("/")).parts)
        data = await storage.open(info.key)
        await asyncio.to_thread(_write_file, target, data)
        total += len(data)
    return total


def _write_file(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
