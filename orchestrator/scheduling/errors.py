"""Errors of the scheduling engine, rooted at :class:`SchedulingError`.

The API maps them at its edge: unknown ids to 404, bad input to 422, :class:`NoFeasibleInstructorError`
and :class:`ConflictError` to 409 carrying their violations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import MatchResult, Violation


class SchedulingError(Exception):
    """Base of every error raised by orchestrator.scheduling."""


class UnknownEntityError(SchedulingError, KeyError):
    def __init__(self, kind: str, entity_id: str) -> None:
        super().__init__(f"unknown {kind} {entity_id!r}")
        self.kind = kind
        self.entity_id = entity_id

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidInputError(SchedulingError, ValueError):
    """A request that can never be valid (bad time zone, bad RRULE, naive datetime...)."""


class ConflictError(SchedulingError):
    """A write was refused by the hard rules; ``violations`` says which and with which session."""

    def __init__(self, violations: list[Violation]) -> None:
        codes = ", ".join(v.rule.value for v in violations)
        super().__init__(f"refused by scheduling rules: {codes}")
        self.violations = violations


class NoFeasibleInstructorError(SchedulingError):
    def __init__(self, result: MatchResult) -> None:
        counts = ", ".join(f"{k.value}={n}" for k, n in result.failure_counts.items())
        super().__init__(f"no feasible instructor ({counts})")
        self.result = result


class JobCancelledError(SchedulingError):
    """The optimisation job was cancelled before it produced a result."""
