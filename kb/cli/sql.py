"""`reasonflux sql`: read-only SQL over the knowledge base (see docs/sql.md for example queries)."""

from __future__ import annotations

import click

from kb.cli.context import AppContext, pass_app
from kb.defaults import SQL_TIMEOUT_S
from kb.output import emit, output_options

DEFAULT_MAX_ROWS = 100_000  # a forgotten LIMIT must not fill memory; 0 lifts it


@click.command("sql")
@click.argument("query", required=False)
@click.option(
    "--file", "-f", "query_file", type=click.File("r"), help="Read the query from a file ('-': stdin)."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.001),
    default=SQL_TIMEOUT_S,
    show_default=True,
    help="Time limit in seconds, for the statement and for reading its rows.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=0),
    default=None,
    help=f"Read and print at most this many rows; the rest is never fetched (default: "
    f"{DEFAULT_MAX_ROWS:,}; 0: no limit).",
)
@output_options
@pass_app
def sql_command(
    app: AppContext, query: str | None, query_file, timeout: float, max_rows: int | None, fmt: str
) -> None:
    """Run one read-only QUERY (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN).

    It runs logged in as the read-only role reasonflux_reader (created on the
    embedded server; see docs/sql.md for an external one), in a READ ONLY
    transaction with a statement timeout, and is always rolled back; writes, DDL
    and multiple statements are refused. Rows stream from a server-side cursor
    that stops at --max-rows (or at --timeout for the whole read); a repeated
    column name gets a suffix (a, a_2).
    Example queries (views current_template, template_history): docs/sql.md.
    """
    from kb.readonly_query import run_readonly

    if (query is None) == (query_file is None):
        raise click.UsageError("give the query as an argument or with --file, not both")
    text = query if query is not None else query_file.read()
    limit = DEFAULT_MAX_ROWS if max_rows is None else (max_rows or None)
    result = run_readonly(app.db().engine, text, timeout_s=timeout, max_rows=limit)
    emit(result.records(), fmt, columns=result.columns)
    # People always hear about rows left out; scripts too unless they chose the limit themselves.
    if result.truncated and (fmt == "table" or max_rows is None):
        click.echo(
            f"(stopped at --max-rows {limit}{' (the default; 0: no limit)' if max_rows is None else ''})",
            err=True,
        )


def register(cli: click.Group) -> None:
    cli.add_command(sql_command)
