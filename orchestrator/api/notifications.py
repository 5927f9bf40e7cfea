"""Notification endpoints: what was (and will be) sent to whom, for every session or one."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.handlers import ok
from orchestrator.api.operations import PAGING, Call, Operation, QueryParam
from orchestrator.api.schemas import ID
from orchestrator.store.notifications import (
    NotificationKind,
    NotificationStatus,
    NotificationStore,
    notification_to_dict,
)

_STATUS = QueryParam("status", {"type": "string", "enum": [s.value for s in NotificationStatus]}, "only this status")
_KIND = QueryParam("kind", {"type": "string", "enum": [k.value for k in NotificationKind]}, "only this kind")


async def _page(call: Call, session_id: str | None) -> web.Response:
    q = call.query
    page = await NotificationStore(call.store).list(
        limit=q["limit"],
        cursor=q.get("cursor"),
        session_id=session_id,
        statuses=[NotificationStatus(q["status"])] if "status" in q else None,
        kind=NotificationKind(q["kind"]) if "kind" in q else None,
    )
    return ok({"items": [notification_to_dict(n) for n in page.items], "next_cursor": page.next_cursor})


async def list_notifications(call: Call) -> web.Response:
    return await _page(call, call.query.get("session_id"))


async def list_session_notifications(call: Call) -> web.Response:
    session = await call.store.get_session(call.path["session_id"])  # 404 for an unknown session
    return await _page(call, session.session_id)


_DESCRIPTION = (
    "Ordered by due time. Reminders (with the recipient's own join link), session_changed notices, post-session "
    "messages and absence alerts are planned when a session is booked or changes; pending ones that no longer fit "
    "are cancelled. Through the webhook channel each is a notification.due event whose webhook-id is the "
    "notification_id."
)

NOTIFICATION_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/notifications",
        "listNotifications",
        "List notifications (by due time)",
        "notifications",
        "notifications:read",
        list_notifications,
        "NotificationPage",
        query=(*PAGING, QueryParam("session_id", ID, "only this session's"), _STATUS, _KIND),
        description=_DESCRIPTION,
    ),
    Operation(
        "GET",
        "/sessions/{session_id}/notifications",
        "listSessionNotifications",
        "The notifications of one session",
        "notifications",
        "notifications:read",
        list_session_notifications,
        "NotificationPage",
        query=(*PAGING, _STATUS, _KIND),
        description=_DESCRIPTION,
    ),
)
