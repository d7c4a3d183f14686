"""Alembic environment: runs on the connection that :func:`fabguard.serve.db.migrate` passes in."""

from __future__ import annotations

from alembic import context

from fabguard.serve.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
