"""Scheduling operations: organisation settings (substitution policy), substitution proposals, optimisation jobs.

Revision ID: 0004_scheduling_ops
Revises: 0003_notifications
Create Date: 2026-11-25
"""

from __future__ import annotations

revision = "0004_scheduling_ops"
down_revision = "0003_notifications"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
