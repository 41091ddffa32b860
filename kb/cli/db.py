"""`reasonflux db`: schema migrations and a summary of the database."""

from __future__ import annotations

import click
import sqlalchemy as sa

from kb import migrate
from kb.cli.context import AppContext, pass_app
from kb.db import mask_url, pin_embedded_revision, unpin_embedded_revision
from kb.errors import ConfirmationRequired
from kb.output import emit, output_options


@click.group("db")
def db_group() -> None:
    """Schema migrations and database information."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def upgrade(app: AppContext, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    database = app.db(check_schema=False, auto_upgrade=False)
    migrate.upgrade(database.engine, revision)
    now = migrate.current_revision(database.engine)
    if database.embedded and now == migrate.head_revision():
        unpin_embedded_revision()
    click.echo(f"at revision {now}")


@db_group.command("downgrade")
@click.argument("revision", default="-1")
@click.option("--yes", is_flag=True, help="Confirm a downgrade that deletes data (tables or columns holding rows).")
@pass_app
def downgrade(app: AppContext, revision: str, yes: bool) -> None:
    """Downgrade the schema to REVISION (default: one step back; 'base' drops everything).

    A downgrade that would drop tables or columns holding rows names them with their row
    counts and is refused unless --yes is given. The embedded database is then left at
    REVISION: later commands refuse to run (instead of upgrading it back automatically)
    until `reasonflux db upgrade`.
    """
    database = app.db(check_schema=False, auto_upgrade=False)
    losses = migrate.downgrade_losses(database.engine, revision)
    if losses and not yes:
        raise ConfirmationRequired(
            f"downgrading to {revision} would delete {migrate.describe_losses(losses)}; nothing was changed. "
            "Export what you need first, then rerun with --yes"
        )
    migrate.downgrade(database.engine, revision)
    now = migrate.current_revision(database.engine)
    if database.embedded:
        pin_embedded_revision(now)
    click.echo(f"at revision {now or 'base'}")


@db_group.command("current")
@output_options(csv_ok=False)
@pass_app
def current(app: AppContext, fmt: str) -> None:
    """Show the database's revision and the code's head revision."""
    database = app.db(check_schema=False)
    emit({"current": migrate.current_revision(database.engine), "head": migrate.head_revision()}, fmt)


@db_group.command("info")
@output_options(csv_ok=False)
@pass_app
def info(app: AppContext, fmt: str) -> None:
    """Masked URL, server and pgvector versions, revision and row counts."""
    database = app.db(check_schema=False)
    emit(database_info(database), fmt)


def database_info(database) -> dict:
    with database.engine.connect() as conn:
        server = conn.execute(sa.text("SHOW server_version")).scalar()
        pgvector = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
        tables = conn.execute(sa.text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname <> 'alembic_version' "
            "ORDER BY c.relname"
        )).scalars().all()
        counts = {}
        if tables:
            union = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM \"{t}\"" for t in tables)
            counts = dict(conn.execute(sa.text(union)).all())
    return {
        "url": mask_url(database.url),
        "embedded": database.embedded,
        "server_version": server,
        "pgvector_version": pgvector,
        "revision": migrate.current_revision(database.engine),
        "head": migrate.head_revision(),
        "row_counts": counts,
    }


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
