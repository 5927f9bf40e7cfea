"""Programmatic Alembic: ``upgrade_to_head`` brings a database to the newest schema.

Two processes that start together must not both run the migrations. On PostgreSQL the upgrade runs
under ``pg_advisory_lock``; on a SQLite file it runs under an exclusive ``flock`` on a sibling lock
file (``<db>.migrate.lock``); an in-memory SQLite database belongs to one process anyway.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
ADVISORY_LOCK_KEY = 0x636C_6D73_6800  # "clmsh": any constant shared by every replica


def alembic_config() -> Config:
    """An Alembic ``Config`` built in code (no alembic.ini)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _upgrade_sync(connection: Connection) -> None:
    current = MigrationContext.configure(connection).get_current_revision()
    if current == head_revision():
        return
    logger.info("store migrating from=%s to=%s", current, head_revision())
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def upgrade_to_head(engine: AsyncEngine, sqlite_path: str | None) -> None:
    """Run ``alembic upgrade head`` on ``engine`` under a cross-process lock."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            await conn.commit()
            try:
                await conn.run_sync(_upgrade_sync)
                await conn.commit()
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                await conn.commit()
        return
    lock_fd: int | None = None
    if sqlite_path is not None:
        lock_fd = await asyncio.to_thread(_flock, sqlite_path + ".migrate.lock")
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_upgrade_sync)
            await conn.commit()
    finally:
        if lock_fd is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)


def _flock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
