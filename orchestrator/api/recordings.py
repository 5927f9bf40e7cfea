"""Recording endpoints: list, metadata, and the authorised download (with HTTP range requests)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from wsgiref.handlers import format_date_time

from aiohttp import web

from orchestrator.api.handlers import ok, page
from orchestrator.api.operations import PAGING, Call, Operation, QueryParam
from orchestrator.api.problems import problem
from orchestrator.api.schemas import ID
from orchestrator.errors import InvalidStateError, NotFoundError
from orchestrator.store import codec
from recorder.errors import SegmentNotFoundError

MEDIA_TYPE = "video/x-matroska"
CHUNK = 1 << 20


async def list_recordings(call: Call) -> web.Response:
    q = call.query
    p = await call.store.list_recordings(
        limit=q["limit"], cursor=q.get("cursor"), status=q.get("status"), session_id=q.get("session_id")
    )
    return page([codec.recording_to_dict(r) for r in p.items], p.next_cursor)


async def get_recording(call: Call) -> web.Response:
    return ok(codec.recording_to_dict(await call.store.get_recording(call.path["recording_id"])))


async def download_recording(call: Call) -> web.StreamResponse:
    """The final file, streamed from the recordings storage (a directory or S3) in 1 MiB reads.

    One ``Range: bytes=a-b`` (or ``a-``, ``-n``) is answered 206 with ``Content-Range``; a range past the end 416;
    a malformed or multi-part range gets the whole file (RFC 9110 lets a server ignore Range). ``If-Range`` with
    an ETag or date that no longer matches gets the whole file too."""
    recording = await call.store.get_recording(call.path["recording_id"])
    storage = call.hooks.recordings
    if storage is None or not recording.files:
        raise InvalidStateError(f"recording {recording.recording_id} has no file yet (status {recording.status})")
    key = recording.files[0]
    try:
        info = await storage.stat(key)
    except (ValueError, SegmentNotFoundError):  # an invalid key (``..``) is not found either
        raise NotFoundError("recording file", key) from None
    etag = f'"{info.etag}"' if info.etag else f'"{info.size:x}-{int(info.modified * 1000):x}"'
    modified = datetime.fromtimestamp(info.modified, UTC)
    headers = {
        "Content-Type": MEDIA_TYPE,
        "Content-Disposition": f'attachment; filename="{recording.session_id}.mkv"',
        "Cache-Control": "private, no-store",
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": format_date_time(info.modified),
    }
    start, end, status = 0, info.size, 200
    if _range_applies(call.request, etag, modified):
        try:
            wanted = call.request.http_range
        except ValueError:
            wanted = slice(None)
        if wanted.start is not None or wanted.stop is not None:
            first = wanted.start if wanted.start is not None and wanted.start >= 0 else info.size + (wanted.start or 0)
            first = max(first, 0)
            if first >= info.size:
                detail = f"the range starts past the end of the {info.size}-byte file"
                return problem(416, "range-not-satisfiable", detail, headers={"Content-Range": f"bytes */{info.size}"})
            start, end, status = first, min(wanted.stop or info.size, info.size), 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(call.request)
    position = start
    while position < end:
        chunk = await storage.read_range(key, position, min(position + CHUNK, end))
        if not chunk:
            break  # the object shrank under us; the client sees a short body
        await response.write(chunk)
        position += len(chunk)
    await response.write_eof()
    return response


def _range_applies(request: web.BaseRequest, etag: str, modified: datetime) -> bool:
    if_range = request.headers.get("If-Range")
    if if_range is None:
        return True
    if if_range.startswith(('"', "W/")):
        return if_range == etag
    try:
        since = parsedate_to_datetime(if_range)
    except (TypeError, ValueError):
        return False
    return modified.replace(microsecond=0) <= since


async def end_session(call: Call) -> web.Response:
    assert call.hooks.ops is not None  # mounted with the ops view only
    return ok(codec.session_to_dict(await call.hooks.ops.end_session(call.path["session_id"])))


_STATUS = QueryParam("status", {"type": "string", "enum": ["recording", "assembling", "ready", "failed"]})

RECORDING_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/recordings",
        "listRecordings",
        "List recordings (oldest first)",
        "recordings",
        "sessions:read",
        list_recordings,
        "RecordingPage",
        query=(*PAGING, _STATUS, QueryParam("session_id", ID, "the recording of this session")),
    ),
    Operation(
        "GET",
        "/recordings/{recording_id}",
        "getRecording",
        "A recording's metadata: status, coverage, gaps, duration, verification",
        "recordings",
        "sessions:read",
        get_recording,
        "Recording",
        description="status `ready`: both copies were merged, the file decodes end to end and covers every second "
        "media was sent. `failed`: `gaps` lists the missing intervals (unix seconds) and `details.problems` why.",
    ),
    Operation(
        "GET",
        "/recordings/{recording_id}/download",
        "downloadRecording",
        "Download the recording (Matroska; supports Range requests)",
        "recordings",
        "sessions:read",
        download_recording,
        None,
        binary=MEDIA_TYPE,
        errors=(409, 416),
        description="A single `Range: bytes=a-b` (or `a-`, `-n`) gives 206 with `Content-Range`; a range past the end "
        "gives 416; several ranges, or an `If-Range` that no longer matches the `ETag`, give the whole file. "
        "A failed recording with a partial file can still be downloaded; 409 while there is no file yet.",
    ),
)

SESSION_OPS_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/sessions/{session_id}/end",
        "endSession",
        "End a provisioned or live session now (the instructor ends the class)",
        "sessions",
        "sessions:write",
        end_session,
        "Session",
        errors=(409,),
        description="Closes the room, emits session.ended, and starts building the recording. 409 if the session "
        "is not provisioned or live.",
    ),
)
