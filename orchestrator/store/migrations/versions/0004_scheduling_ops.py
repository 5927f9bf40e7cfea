"""Scheduling operations: organisation settings (substitution policy), substitution proposals, optimisation jobs.

Also ``join_links.revoked_at``: a session's instructor links stop working when a substitute takes over.

Revision ID: 0004_scheduling_ops
Revises: 0003_notifications
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_scheduling_ops"
down_revision = "0003_notifications"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("join_links") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "organisation_settings",
        sa.Column("settings_id", sa.String(length=16), nullable=False),
        sa.Column("substitution_policy", sa.String(length=16), nullable=False),
        sa.Column("substitute_candidates", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("settings_id", name=op.f("pk_organisation_settings")),
    )
    op.create_table(
        "substitutions",
        sa.Column("substitution_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("booking_id", sa.String(length=64), nullable=False),
        sa.Column("open_session_id", sa.String(length=64), nullable=True),
        sa.Column("previous_instructor_id", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("alternatives", sa.JSON(), nullable=False),
        sa.Column("instructor_id", sa.String(length=64), nullable=True),
        sa.Column("exception_id", sa.String(length=64), nullable=True),
        sa.Column("decision_reason", sa.String(length=1000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_substitutions_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("substitution_id", name=op.f("pk_substitutions")),
        sa.UniqueConstraint("open_session_id", name=op.f("uq_substitutions_open_session_id")),
    )
    op.create_index(op.f("ix_substitutions_session_id"), "substitutions", ["session_id"], unique=False)
    op.create_index("ix_substitutions_status_created", "substitutions", ["status", "created_at"], unique=False)
    op.create_table(
        "optimization_jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("week_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("time_limit_s", sa.Float(), nullable=False),
        sa.Column("reassign", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("apply_report", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_optimization_jobs")),
    )
    op.create_index(op.f("ix_optimization_jobs_status"), "optimization_jobs", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_optimization_jobs_status"), table_name="optimization_jobs")
    op.drop_table("optimization_jobs")
    op.drop_index("ix_substitutions_status_created", table_name="substitutions")
    op.drop_index(op.f("ix_substitutions_session_id"), table_name="substitutions")
    op.drop_table("substitutions")
    op.drop_table("organisation_settings")
    with op.batch_alter_table("join_links") as batch:
        batch.drop_column("revoked_at")
