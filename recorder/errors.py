"""Errors of the recorder package, rooted at :class:`RecorderError`."""

from __future__ import annotations

import errno as _errno
import os

FULL_ERRNOS = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG})


class RecorderError(Exception):
    """Base class of everything the recorder raises on purpose."""

    code = "recorder_error"


class StorageError(RecorderError):
    """Writing or reading recorded media failed; ``cause`` is the underlying OS error."""

    code = "storage_error"

    def __init__(
        self, message: str, *, path: str | os.PathLike[str] | None = None, cause: BaseException | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.cause = cause
        self.errno: int | None = getattr(cause, "errno", None)

    def describe(self) -> dict[str, object]:
        """What a progress report or the orchestrator shows for this error."""
        return {
            "code": self.code,
            "message": self.message,
            "path": self.path,
            "errno": self.errno,
            "cause": _errno.errorcode.get(self.errno, "") if self.errno else type(self.cause).__name__,
        }


class StorageFullError(StorageError):
    """The storage is full (ENOSPC), over quota (EDQUOT) or the file too large (EFBIG)."""

    code = "storage_full"


class SegmentNotFoundError(StorageError):
    code = "not_found"


class JoinError(RecorderError):
    """The media node refused or did not answer the recorder's join."""

    code = "join_failed"


class AssemblyError(RecorderError):
    """No final recording can be built from the segments given."""

    code = "assembly_failed"


class VerificationError(RecorderError):
    code = "verification_failed"


def storage_error(action: str, path: str | os.PathLike[str], exc: OSError) -> StorageError:
    """Translate an OS error while ``action`` on ``path`` into the right StorageError."""
    number = getattr(exc, "errno", None)
    reason = os.strerror(number) if isinstance(number, int) and number > 0 else str(exc)
    cls = StorageFullError if number in FULL_ERRNOS else StorageError
    return cls(f"{action} {path}: {reason}", path=path, cause=exc)
