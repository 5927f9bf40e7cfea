"""Notifications outbox: reminders, post-session messages, absence alerts, with their join links.

Revision ID: 0003_notifications
Revises: 0002_recording_jobs
Create Date: 2026-11-25
"""

from __future__ import annotations

revision = "0003_notifications"
down_revision = "0002_recording_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
