"""Recording jobs (two copies per recorded session, leases) and recording files.

Revision ID: 0002_recording_jobs
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

revision = "0002_recording_jobs"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
