"""Recording jobs (two copies per recorded session, leases) and recording files.

Revision ID: 0002_recording_jobs
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_recording_jobs"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("media_start", sa.Float(), nullable=True))
        batch.add_column(sa.Column("media_end", sa.Float(), nullable=True))
        batch.add_column(sa.Column("duration", sa.Float(), nullable=True))
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("failovers", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("details", sa.JSON(), nullable=True))
    op.create_table(
        "recording_jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.String(length=8), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("node_id", sa.String(length=200), nullable=True),
        sa.Column("failure", sa.JSON(), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_recording_jobs_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_recording_jobs")),
        sa.UniqueConstraint("session_id", "slot", "attempt", name="uq_recording_jobs_session_slot_attempt"),
    )
    op.create_index("ix_recording_jobs_status", "recording_jobs", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_recording_jobs_status", table_name="recording_jobs")
    op.drop_table("recording_jobs")
    with op.batch_alter_table("recordings") as batch:
        for column in ("details", "failovers", "size_bytes", "duration", "media_end", "media_start"):
            batch.drop_column(column)
