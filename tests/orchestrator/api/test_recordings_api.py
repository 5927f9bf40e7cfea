"""Recording endpoints over HTTP on a real store: list and metadata, scopes, and the download with ranges."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from orchestrator.api import ApiHooks, create_api_key
from orchestrator.errors import InvalidStateError
from orchestrator.store import Store
from orchestrator.store import schema as t
from orchestrator.store.models import RecordingJobStatus
from recorder.storage import LocalStorage, S3Storage, Storage
from tests.orchestrator.api.conftest import ApiFactory
from tests.orchestrator.test_provisioning import book


async def recorded_session(store: Store) -> str:
    session_id = await book(store, (datetime.now(UTC) + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0))
    jobs = await store.ensure_recording_jobs(session_id)
    assert [j.copy_id for j in jobs] == ["a1", "b1"]
    assert await store.ensure_recording_jobs(session_id) == jobs  # idempotent
    return session_id


@pytest.fixture(params=["local", "s3"])
async def recordings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """The recordings storage the API downloads from: a directory, or a real S3 server (SeaweedFS)."""
    storage: Storage
    if request.param == "local":
        storage = LocalStorage(tmp_path / "recordings")
    else:
        storage = S3Storage(request.getfixturevalue("seaweedfs").config())
    yield storage
    await storage.close()


async def test_recordings_are_listed_read_and_downloaded_with_ranges(make_api: ApiFactory, recordings: Storage) -> None:
    api = await make_api(ApiHooks(recordings=recordings))
    session_id = await recorded_session(api.store)
    resp = await api.client.get("/v1/recordings", params={"session_id": session_id}, headers=api.auth())
    assert resp.status == 200
    (item,) = (await resp.json())["items"]
    assert item["status"] == "recording" and item["failovers"] == 0
    rid = item["recording_id"]

    # no file yet: 409 with a problem document
    resp = await api.client.get(f"/v1/recordings/{rid}/download", headers=api.auth())
    assert resp.status == 409 and resp.content_type == "application/problem+json"

    data = bytes(range(256)) * 40 + os.urandom(3 << 20)  # more than the handler's 1 MiB reads
    await recordings.put(f"{session_id}/recording.mkv", data)
    await api.store.upsert_recording(
        session_id, status="ready", coverage=1.0, gaps=(), files=[f"{session_id}/recording.mkv"], duration=12.5
    )
    resp = await api.client.get(f"/v1/recordings/{rid}", headers=api.auth())
    body = await resp.json()
    assert body["status"] == "ready" and body["duration"] == 12.5 and body["files"] == [f"{session_id}/recording.mkv"]

    url = f"/v1/recordings/{rid}/download"
    resp = await api.client.get(url, headers=api.auth())
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Content-Type"] == "video/x-matroska"
    resp = await api.client.get(url, headers={**api.auth(), "Range": "bytes=100-199"})
    assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert await resp.read() == data[100:200]
    resp = await api.client.get(url, headers={**api.auth(), "Range": "bytes=-10"})
    assert resp.status == 206 and await resp.read() == data[-10:]
    resp = await api.client.get(url, headers={**api.auth(), "Range": "bytes=1048000-2097999"})  # across reads
    assert resp.status == 206 and await resp.read() == data[1048000:2098000]
    resp = await api.client.get(url, headers={**api.auth(), "Range": f"bytes={len(data) - 5}-{len(data) + 100}"})
    assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes {len(data) - 5}-{len(data) - 1}/{len(data)}"
    assert await resp.read() == data[-5:]
    resp = await api.client.get(url, headers={**api.auth(), "Range": f"bytes={len(data) + 5}-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(data)}"
    resp = await api.client.get(url, headers={**api.auth(), "Range": "bytes=0-1,5-9"})  # multi-part: whole file
    assert resp.status == 200 and len(await resp.read()) == len(data)
    # If-Range: the range only while the file is the one the client has
    etag = resp.headers["ETag"]
    resp = await api.client.get(url, headers={**api.auth(), "Range": "bytes=0-9", "If-Range": etag})
    assert resp.status == 206 and await resp.read() == data[:10]
    resp = await api.client.get(url, headers={**api.auth(), "Range": "bytes=0-9", "If-Range": '"stale"'})
    assert resp.status == 200 and len(await resp.read()) == len(data)

    # the recording.ready webhook is emitted once, whatever repeats the final status
    await api.store.upsert_recording(session_id, status="ready", coverage=1.0)
    async with api.store.read() as c:
        n = (
            await c.execute(
                select(func.count())
                .select_from(t.webhook_outbox)
                .where(t.webhook_outbox.c.event_type == "recording.ready")
            )
        ).scalar()
    assert n == 1


async def test_recordings_need_a_key_with_the_scope(make_api: ApiFactory, tmp_path: Path) -> None:
    api = await make_api(ApiHooks(recordings=LocalStorage(tmp_path)))
    await recorded_session(api.store)
    resp = await api.client.get("/v1/recordings")
    assert resp.status == 401
    _, directory_only = await create_api_key(api.store, "directory", ["directory:read"])
    resp = await api.client.get("/v1/recordings", headers=api.auth(directory_only))
    assert resp.status == 403
    resp = await api.client.get("/v1/recordings/rec_nope", headers=api.auth())
    assert resp.status == 404
    resp = await api.client.get("/v1/recordings", params={"status": "lost"}, headers=api.auth())
    assert resp.status in (400, 422)


async def test_a_file_outside_the_recordings_directory_is_never_served(make_api: ApiFactory, tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("not yours")
    api = await make_api(ApiHooks(recordings=LocalStorage(root)))
    session_id = await recorded_session(api.store)
    recording = await api.store.upsert_recording(session_id, status="failed", files=["../secret.txt"])
    resp = await api.client.get(f"/v1/recordings/{recording.recording_id}/download", headers=api.auth())
    assert resp.status == 404


async def test_a_replaced_job_starts_the_next_attempt_of_its_slot(make_api: ApiFactory) -> None:
    api = await make_api()
    store = api.store
    session_id = await recorded_session(store)
    a1 = next(j for j in await store.recording_jobs(session_id) if j.slot == "a")
    assigned = await store.update_recording_job(
        a1.job_id, if_status=[RecordingJobStatus.PENDING], status=RecordingJobStatus.ASSIGNED, worker_id="w1"
    )
    assert assigned.status is RecordingJobStatus.ASSIGNED
    a2 = await store.replace_recording_job(a1.job_id, {"cause": "stalled", "worker_id": "w1"})
    assert (a2.slot, a2.attempt, a2.status) == ("a", 2, RecordingJobStatus.PENDING)
    assert {j.copy_id: j.status for j in await store.recording_jobs(session_id)} == {
        "a1": RecordingJobStatus.REPLACED,
        "a2": RecordingJobStatus.PENDING,
        "b1": RecordingJobStatus.PENDING,
    }
    recording = await store.recording_of(session_id)
    assert recording is not None and recording.failovers == 1
    # a second replacement of the same job is refused (compare-and-set): no a3
    with pytest.raises(InvalidStateError):
        await store.replace_recording_job(a1.job_id, {"cause": "again"})
    # presence before the coordinator: the media interval is kept
    await store.note_recording_media(session_id, 1000.0)
    await store.note_recording_media(session_id, 1060.0)
    recording = await store.recording_of(session_id)
    assert recording is not None and (recording.media_start, recording.media_end) == (1000.0, 1060.0)
