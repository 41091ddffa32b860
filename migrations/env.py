"""Alembic environment: compares against SQLModel.metadata with compare_type.

Called from kb.migrate with a live connection in config.attributes, or from the
`alembic` command line with DATABASE_URL set.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import kb.models  # noqa: F401  (registers every table)
from kb.db import normalize_url
from kb.migrate import include_object

config = context.config
target_metadata = SQLModel.metadata


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_object=include_object,
        render_as_batch=False,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set DATABASE_URL, or use `reasonflux db upgrade`")

    engine = sa.create_engine(normalize_url(url))
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported")
run_migrations_online()
