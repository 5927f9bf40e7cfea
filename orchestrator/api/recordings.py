"""Recording endpoints: list, metadata, and the authorised download (with HTTP range requests)."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.handlers import ok, page
from orchestrator.api.operations import PAGING, Call, Operation, QueryParam
from orchestrator.api.schemas import ID
from orchestrator.errors import InvalidStateError, NotFoundError
from orchestrator.store import codec

MEDIA_TYPE = "video/x-matroska"


async def list_recordings(call: Call) -> web.Response:
    q = call.query
    p = await call.store.list_recordings(
        limit=q["limit"], cursor=q.get("cursor"), status=q.get("status"), session_id=q.get("session_id")
    )
    return page([codec.recording_to_dict(r) for r in p.items], p.next_cursor)


async def get_recording(call: Call) -> web.Response:
    return ok(codec.recording_to_dict(await call.store.get_recording(call.path["recording_id"])))


async def download_recording(call: Call) -> web.StreamResponse:
    recording = await call.store.get_recording(call.path["recording_id"])
    root = call.hooks.recordings
    if root is None or not recording.files:
        raise InvalidStateError(f"recording {recording.recording_id} has no file yet (status {recording.status})")
    path = root.joinpath(*recording.files[0].split("/"))
    if not path.resolve().is_relative_to(root.resolve()) or not path.is_file():
        raise NotFoundError("recording file", recording.files[0])
    # aiohttp's FileResponse answers Range/If-Range itself: 206 with Content-Range, 416 for a range past the end
    return web.FileResponse(
        path,
        headers={
            "Content-Type": MEDIA_TYPE,
            "Content-Disposition": f'attachment; filename="{recording.session_id}.mkv"',
            "Cache-Control": "private, no-store",
        },
    )


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
        description="A single `Range: bytes=a-b` gives 206 with `Content-Range`; a range past the end gives 416. "
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
