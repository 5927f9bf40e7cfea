"""Engagement events: talk time, chat, raised hands, reactions and answers, per session and participant.

Revision ID: 0005_engagement
Revises: 0004_scheduling_ops
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_engagement"
down_revision = "0004_scheduling_ops"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engagement_events",
        sa.Column("event_key", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("participant_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_engagement_events_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_key", name=op.f("pk_engagement_events")),
    )
    op.create_index(op.f("ix_engagement_events_session_id"), "engagement_events", ["session_id"], unique=False)
    op.create_index("ix_engagement_events_participant_at", "engagement_events", ["participant_id", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_engagement_events_participant_at", table_name="engagement_events")
    op.drop_index(op.f("ix_engagement_events_session_id"), table_name="engagement_events")
    op.drop_table("engagement_events")
