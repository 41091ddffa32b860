"""`reasonflux sql`: read-only SQL over the knowledge base (see docs/sql.md for example queries)."""

from __future__ import annotations

import click

from kb.cli.context import AppContext, pass_app
from kb.output import emit, output_options
from kb.sql_readonly import DEFAULT_TIMEOUT_S, run_readonly


@click.command("sql")
@click.argument("query", required=False)
@click.option("--file", "-f", "query_file", type=click.File("r"), help="Read the query from a file ('-': stdin).")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Statement timeout in seconds.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None,
              help="Read and print at most this many rows (the rest is never fetched).")
@output_options
@pass_app
def sql_command(app: AppContext, query: str | None, query_file, timeout: float, max_rows: int | None,
                fmt: str) -> None:
    """Run one read-only QUERY (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN).

    It runs logged in as the read-only role reasonflux_reader (created on the
    embedded server; see docs/sql.md for an external one), in a READ ONLY
    transaction with a statement timeout, and is always rolled back; writes, DDL
    and multiple statements are refused. Rows stream from a server-side cursor
    that stops at --max-rows; a repeated column name gets a suffix (a, a_2).
    Example queries (views current_template, template_history): docs/sql.md.
    """
    if (query is None) == (query_file is None):
        raise click.UsageError("give the query as an argument or with --file, not both")
    text = query if query is not None else query_file.read()
    result = run_readonly(app.db().engine, text, timeout_s=timeout, max_rows=max_rows)
    emit(result.records(), fmt, columns=result.columns)
    if fmt == "table" and result.truncated:  # scripts get exactly the rows, nothing else
        click.echo(f"(stopped at --max-rows {max_rows})", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(sql_command)
