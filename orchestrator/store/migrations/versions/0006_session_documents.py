"""Session documents: the draft written when a session ends, and the instructor's completion.

Revision ID: 0006_session_documents
Revises: 0005_engagement
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_session_documents"
down_revision = "0005_engagement"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_documents",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("draft", sa.JSON(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("curriculum_covered", sa.String(length=200), nullable=True),
        sa.Column("completed_by", sa.String(length=200), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_session_documents_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_session_documents")),
    )
    op.create_index("ix_session_documents_status_created", "session_documents", ["status", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_session_documents_status_created", table_name="session_documents")
    op.drop_table("session_documents")
