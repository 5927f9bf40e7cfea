"""Alembic environment for the classmesh store, driven programmatically by ``migrate.upgrade_to_head``.

There is no alembic.ini: the caller passes an open synchronous connection in
``config.attributes["connection"]`` and this module runs the migrations on it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from orchestrator.store.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("classmesh migrations run only through orchestrator.store.migrate.upgrade_to_head")
_run(connection)
