"""Notifications outbox: reminders, post-session messages, absence alerts, with their join links.

Revision ID: 0003_notifications
Revises: 0002_recording_jobs
Create Date: 2026-11-25

``notifications`` holds one row per (session, recipient, kind, variant): the unique key is what makes planning
twice (two replicas, a restart) create nothing new. ``notification_plans`` holds, per session, the state its
notifications were planned for, so a change is noticed once and announced once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_notifications"
down_revision = "0002_recording_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("notification_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("recipient_id", sa.String(length=64), nullable=False),
        sa.Column("recipient_role", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("session_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("address", sa.String(length=320), nullable=True),
        sa.Column("join_link_jti", sa.String(length=128), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_notifications_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("notification_id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("session_id", "recipient_id", "kind", "variant", name="uq_notifications_once"),
    )
    op.create_index("ix_notifications_status_next", "notifications", ["status", "next_attempt_at"], unique=False)
    op.create_index("ix_notifications_due_id", "notifications", ["due_at", "notification_id"], unique=False)
    op.create_table(
        "notification_plans",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("session_updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_notification_plans_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_notification_plans")),
    )


def downgrade() -> None:
    op.drop_table("notification_plans")
    op.drop_index("ix_notifications_due_id", table_name="notifications")
    op.drop_index("ix_notifications_status_next", table_name="notifications")
    op.drop_table("notifications")
