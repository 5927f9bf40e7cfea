"""SQLAlchemy Core table definitions: the live description of the schema.

Alembic migrations under ``migrations/versions`` are frozen snapshots written by hand; the test suite
checks that ``upgrade head`` produces exactly these tables (``test_store_migrations.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = sa.String(64)


def _ts(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


subjects = sa.Table(
    "subjects",
    metadata,
    sa.Column("subject_id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    _ts("created_at"),
)

instructors = sa.Table(
    "instructors",
    metadata,
    sa.Column("instructor_id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("time_zone", sa.String(64), nullable=False),
    sa.Column("buffer_minutes", sa.Integer, nullable=False),
    sa.Column("max_sessions_per_day", sa.Integer, nullable=True),
    sa.Column("max_sessions_per_week", sa.Integer, nullable=True),
    sa.Column("preferred_student_ids", sa.JSON, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
)

instructor_qualifications = sa.Table(
    "instructor_qualifications",
    metadata,
    sa.Column("instructor_id", ID, sa.ForeignKey("instructors.instructor_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("subject_id", ID, sa.ForeignKey("subjects.subject_id"), primary_key=True),
    sa.Column("max_level", sa.Integer, nullable=False),
)

instructor_availability = sa.Table(
    "instructor_availability",
    metadata,
    sa.Column("availability_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "instructor_id",
        ID,
        sa.ForeignKey("instructors.instructor_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("weekday", sa.Integer, nullable=False),
    sa.Column("start_time", sa.String(5), nullable=False),
    sa.Column("end_time", sa.String(5), nullable=False),
)

instructor_exceptions = sa.Table(
    "instructor_exceptions",
    metadata,
    sa.Column("exception_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "instructor_id",
        ID,
        sa.ForeignKey("instructors.instructor_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    _ts("starts_at"),
    _ts("ends_at"),
    sa.Column("reason", sa.String(500), nullable=False),
)

students = sa.Table(
    "students",
    metadata,
    sa.Column("student_id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("time_zone", sa.String(64), nullable=False),
    sa.Column("country", sa.String(2), nullable=True),
    sa.Column("latitude", sa.Float, nullable=True),
    sa.Column("longitude", sa.Float, nullable=True),
    sa.Column("guardian_name", sa.String(200), nullable=True),
    sa.Column("guardian_email", sa.String(320), nullable=True),
    sa.Column("preferred_instructor_ids", sa.JSON, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
)

student_levels = sa.Table(
    "student_levels",
    metadata,
    sa.Column("student_id", ID, sa.ForeignKey("students.student_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("subject_id", ID, sa.ForeignKey("subjects.subject_id"), primary_key=True),
    sa.Column("level", sa.Integer, nullable=False),
)

bookings = sa.Table(
    "bookings",
    metadata,
    sa.Column("booking_id", ID, primary_key=True),
    sa.Column("subject_id", ID, sa.ForeignKey("subjects.subject_id"), nullable=False),
    sa.Column("instructor_id", ID, sa.ForeignKey("instructors.instructor_id"), nullable=True),
    _ts("starts_at"),
    sa.Column("duration_minutes", sa.Integer, nullable=False),
    sa.Column("rrule", sa.String(500), nullable=True),
    sa.Column("recording", sa.Boolean, nullable=False),
    sa.Column("notes", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("curriculum_unit", sa.String(200), nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    sa.Index("ix_bookings_starts_at_booking_id", "starts_at", "booking_id"),
)

booking_students = sa.Table(
    "booking_students",
    metadata,
    sa.Column("booking_id", ID, sa.ForeignKey("bookings.booking_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("student_id", ID, sa.ForeignKey("students.student_id"), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_id", ID, primary_key=True),
    sa.Column("booking_id", ID, sa.ForeignKey("bookings.booking_id", ondelete="CASCADE"), nullable=False),
    sa.Column("occurrence_index", sa.Integer, nullable=False),
    _ts("starts_at"),
    _ts("ends_at"),
    sa.Column("instructor_id", ID, sa.ForeignKey("instructors.instructor_id"), nullable=False, index=True),
    sa.Column("subject_id", ID, sa.ForeignKey("subjects.subject_id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("room_id", sa.String(128), nullable=True),
    sa.Column("region", sa.String(64), nullable=True),
    sa.Column("node_id", sa.String(128), nullable=True),
    sa.Column("recording", sa.Boolean, nullable=False),
    sa.Column("curriculum_unit", sa.String(200), nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    sa.UniqueConstraint("booking_id", "occurrence_index", name="uq_sessions_booking_occurrence"),
    sa.Index("ix_sessions_starts_at_session_id", "starts_at", "session_id"),
)

session_students = sa.Table(
    "session_students",
    metadata,
    sa.Column("session_id", ID, sa.ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("student_id", ID, sa.ForeignKey("students.student_id"), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
)

attendance = sa.Table(
    "attendance",
    metadata,
    sa.Column("attendance_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "session_id",
        ID,
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("participant_id", ID, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    _ts("joined_at"),
    _ts("left_at", nullable=True),
)

occupancy = sa.Table(
    "occupancy",
    metadata,
    sa.Column("person_kind", sa.String(16), nullable=False),
    sa.Column("person_id", ID, nullable=False),
    sa.Column("slot", sa.BigInteger, nullable=False),
    sa.Column(
        "session_id",
        ID,
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.PrimaryKeyConstraint("person_kind", "person_id", "slot", name="pk_occupancy"),
)

join_links = sa.Table(
    "join_links",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column(
        "session_id",
        ID,
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("participant_id", ID, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    _ts("expires_at"),
    _ts("created_at"),
    _ts("revoked_at", nullable=True),  # added in 0004_scheduling_ops: the instructor was replaced
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    _ts("created_at"),
    _ts("revoked_at", nullable=True),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("api_key_id", ID, primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("method_path", sa.String(600), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("response_status", sa.Integer, nullable=True),
    sa.Column("response_body", sa.Text, nullable=True),
    _ts("created_at"),
)

webhook_subscriptions = sa.Table(
    "webhook_subscriptions",
    metadata,
    sa.Column("subscription_id", ID, primary_key=True),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("secret", sa.String(200), nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
)

webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("event_id", ID, primary_key=True),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("ordering_key", sa.String(128), nullable=True),
    _ts("created_at"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("delivery_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", ID, sa.ForeignKey("webhook_outbox.event_id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "subscription_id",
        ID,
        sa.ForeignKey("webhook_subscriptions.subscription_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("ordering_key", sa.String(128), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    _ts("next_attempt_at"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    _ts("delivered_at", nullable=True),
    _ts("created_at"),
    sa.Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_chain", "subscription_id", "ordering_key", "delivery_id"),
)

# added in 0003_notifications: the notifications outbox (orchestrator/notifications.py) and, per session, the state
# its notifications were last planned for (a changed state is a new revision: tell everyone affected, re-plan)
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("notification_id", ID, primary_key=True),
    sa.Column("session_id", ID, sa.ForeignKey("sessions.session_id", ondelete="CASCADE"), nullable=False),
    sa.Column("recipient_id", ID, nullable=False),
    sa.Column("recipient_role", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("variant", sa.String(64), nullable=False),  # tells apart reminders (offset@start), changes (revision)
    sa.Column("status", sa.String(16), nullable=False),
    _ts("due_at"),
    _ts("next_attempt_at"),
    _ts("session_start"),  # the start the notification was planned for
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("channel", sa.String(16), nullable=True),  # set by the claim
    sa.Column("claimed_by", sa.String(128), nullable=True),
    sa.Column("fencing_token", sa.BigInteger, nullable=True),
    _ts("claimed_at", nullable=True),
    _ts("sent_at", nullable=True),
    sa.Column("address", sa.String(320), nullable=True),
    sa.Column("join_link_jti", sa.String(128), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("details", sa.JSON, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    sa.UniqueConstraint("session_id", "recipient_id", "kind", "variant", name="uq_notifications_once"),
    sa.Index("ix_notifications_status_next", "status", "next_attempt_at"),
    sa.Index("ix_notifications_due_id", "due_at", "notification_id"),
)

notification_plans = sa.Table(
    "notification_plans",
    metadata,
    sa.Column("session_id", ID, sa.ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("state", sa.JSON, nullable=False),
    _ts("session_updated_at"),
    _ts("updated_at"),
)

exceptions = sa.Table(
    "exceptions",
    metadata,
    sa.Column("exception_id", ID, primary_key=True),
    sa.Column("dedup_key", sa.String(255), nullable=False, unique=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(200), nullable=True),
    sa.Column("subject_refs", sa.JSON, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("occurrences", sa.Integer, nullable=False),
    _ts("snoozed_until", nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("resolved_at", nullable=True),
)

recordings = sa.Table(
    "recordings",
    metadata,
    sa.Column("recording_id", ID, primary_key=True),
    sa.Column(
        "session_id",
        ID,
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("coverage", sa.Float, nullable=False),
    sa.Column("gaps", sa.JSON, nullable=False),
    sa.Column("files", sa.JSON, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    # added in 0002_recording_jobs: the interval media was sent (unix seconds, from presence events), the final
    # file's size and duration, and what verification found
    sa.Column("media_start", sa.Float, nullable=True),
    sa.Column("media_end", sa.Float, nullable=True),
    sa.Column("duration", sa.Float, nullable=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=True),
    sa.Column("failovers", sa.Integer, nullable=False, server_default="0"),
    sa.Column("details", sa.JSON, nullable=True),
)

recording_jobs = sa.Table(
    "recording_jobs",
    metadata,
    sa.Column("job_id", ID, primary_key=True),
    sa.Column("session_id", ID, sa.ForeignKey("sessions.session_id", ondelete="CASCADE"), nullable=False),
    sa.Column("slot", sa.String(8), nullable=False),  # "a" | "b": the two copies
    sa.Column("attempt", sa.Integer, nullable=False),  # 1, then +1 per replacement of that slot
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("worker_id", sa.String(200), nullable=True),
    sa.Column("node_id", sa.String(200), nullable=True),
    sa.Column("failure", sa.JSON, nullable=True),
    sa.Column("progress", sa.JSON, nullable=True),
    _ts("started_at", nullable=True),
    _ts("ended_at", nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    sa.UniqueConstraint("session_id", "slot", "attempt", name="uq_recording_jobs_session_slot_attempt"),
    sa.Index("ix_recording_jobs_status", "status"),
)

# ---------------------------------------------------------------------- scheduling operations (0004_scheduling_ops)

organisation_settings = sa.Table(
    "organisation_settings",
    metadata,
    sa.Column("settings_id", sa.String(16), primary_key=True),  # always "default": one organisation per deployment
    sa.Column("substitution_policy", sa.String(16), nullable=False),
    sa.Column("substitute_candidates", sa.Integer, nullable=False),
    _ts("updated_at"),
)

substitutions = sa.Table(
    "substitutions",
    metadata,
    sa.Column("substitution_id", ID, primary_key=True),
    sa.Column(
        "session_id",
        ID,
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("booking_id", ID, nullable=False),
    # the session id while the substitution is open (proposed), NULL once decided: at most one open per session
    sa.Column("open_session_id", ID, nullable=True, unique=True),
    sa.Column("previous_instructor_id", ID, nullable=False),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("policy", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("candidates", sa.JSON, nullable=False),
    sa.Column("alternatives", sa.JSON, nullable=False),
    sa.Column("instructor_id", ID, nullable=True),
    sa.Column("exception_id", ID, nullable=True),
    sa.Column("decision_reason", sa.String(1000), nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("decided_at", nullable=True),
    sa.Index("ix_substitutions_status_created", "status", "created_at"),
)

optimization_jobs = sa.Table(
    "optimization_jobs",
    metadata,
    sa.Column("job_id", ID, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    _ts("week_start"),
    sa.Column("time_limit_s", sa.Float, nullable=False),
    sa.Column("reassign", sa.Boolean, nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),  # the replica running it
    _ts("heartbeat_at"),  # refreshed by the owner while queued/running; stale = the owner died
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("progress", sa.JSON, nullable=False),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    _ts("applied_at", nullable=True),
    sa.Column("apply_report", sa.JSON, nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("started_at", nullable=True),
    _ts("finished_at", nullable=True),
)

engagement_events = sa.Table(
    "engagement_events",
    metadata,
    # a digest of the media node's event (room, participant, node, event, time): a redelivered event is the same row
    sa.Column("event_key", sa.String(64), primary_key=True),
    sa.Column(
        "session_id",
        ID,
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("participant_id", ID, nullable=False),  # the person: a student or instructor id
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # talk | chat | hand | reaction | poll_answer | check_answer
    _ts("at"),
    sa.Column("value", sa.Float, nullable=False),  # seconds for talk, 1 for the others
    sa.Column("details", sa.JSON, nullable=False),
    sa.Index("ix_engagement_events_participant_at", "participant_id", "at"),
)

session_documents = sa.Table(
    "session_documents",
    metadata,
    sa.Column("session_id", ID, sa.ForeignKey("sessions.session_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # draft | completed
    sa.Column("draft", sa.JSON, nullable=False),  # written by the system when the session ends
    sa.Column("notes", sa.Text, nullable=True),  # the instructor's own
    sa.Column("curriculum_covered", sa.String(200), nullable=True),
    sa.Column("completed_by", sa.String(200), nullable=True),
    _ts("completed_at", nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    sa.Index("ix_session_documents_status_created", "status", "created_at"),
)


async def insert_if_absent(c: AsyncConnection, table: sa.Table, values: dict[str, Any]) -> bool:
    """Insert a row unless one with its key exists (``ON CONFLICT DO NOTHING`` on both backends); True when it
    was inserted. For writes that a redelivery or a second replica may repeat."""
    insert = pg_insert if c.dialect.name == "postgresql" else sqlite_insert
    done = await c.execute(insert(table).values(**values).on_conflict_do_nothing())
    return bool(done.rowcount)
