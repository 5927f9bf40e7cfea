"""Who may do what: join-token checks and the role rules applied to every client message.

The token says everything: the room, the identity, the role and the permissions (``core.tokens`` already
refuses a role holding more than it may). Signaling adds the per-message rules:

- publishing a source needs its permission (camera -> publish_video, microphone -> publish_audio,
  screen -> publish_screen); observers and recorders hold none, so they cannot publish;
- chat, hand, reaction and answer need ``data``; moderate and asking a poll or check need ``moderate``
  (students never hold it);
- muting one's own source needs that source's publish permission.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.tokens import Grant, Permission, TokenError, TokenVerifier
from signaling.errors import AuthError, PermissionDeniedError

SOURCE_PERMISSION: dict[str, Permission] = {
    "camera": Permission.PUBLISH_VIDEO,
    "microphone": Permission.PUBLISH_AUDIO,
    "screen": Permission.PUBLISH_SCREEN,
}


def verify_join(verifier: TokenVerifier, token: str, room: str | None) -> Grant:
    """The grant of a join token, checked against ``room`` when the client names one."""
    try:
        return verifier.verify(token, room=room)
    except TokenError as exc:
        raise AuthError(str(exc), code=exc.code) from None


def require(grant: Grant, permission: Permission, action: str) -> None:
    if not grant.can(permission):
        raise PermissionDeniedError(f"role {grant.role.value} may not {action} (needs {permission.value})")


def require_publish(grant: Grant, sources: Iterable[str]) -> None:
    for source in sorted(set(sources)):
        require(grant, SOURCE_PERMISSION[source], f"publish {source}")
