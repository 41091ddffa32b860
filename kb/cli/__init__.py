"""The `reasonflux` command line: a thin click layer over the library.

One module per command group. Groups that live outside kb/ (pipelines, serve)
plug in through the `reasonflux.commands` entry point, so kb/ imports neither.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click
import psycopg
import sqlalchemy as sa

from kb import __version__
from kb.cli.context import AppContext, pass_app
from kb.db import SchemaOutOfDate, db_error_reason
from kb.errors import KbError
from kb.runs import Terminated, install_sigterm_handler
from kb.secrets import scrub

__all__ = ["AppContext", "cli", "main", "pass_app"]


class _Group(click.Group):
    """Turns KbError, the database errors a user can act on, Ctrl-C and SIGTERM into one clean line and an
    exit code, for every subcommand."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SchemaOutOfDate as e:
            raise _UserError(str(e), 4) from None
        except KbError as e:
            raise _UserError(str(e), e.exit_code) from None
        except (sa.exc.OperationalError, psycopg.OperationalError) as e:  # server gone mid-command
            raise _UserError(f"lost the database connection: {db_error_reason(e)}", 1) from None
        except sa.exc.DataError as e:  # a value the checks up front did not foresee; its transaction rolled back
            raise _UserError(f"the database refused a value: {db_error_reason(e)}", 2) from None
        except Terminated:
            raise _UserError("terminated (SIGTERM)", 143) from None
        except KeyboardInterrupt:
            raise _UserError("interrupted (Ctrl-C)", 130) from None


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(scrub(message))
        self.exit_code = exit_code


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--database-url", envvar="DATABASE_URL", default=None, metavar="URL",
    help="PostgreSQL server to use (default: the embedded server under REASONFLUX_HOME).",
)
@click.version_option(__version__, prog_name="reasonflux")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None) -> None:
    """ReasonFlux thought-template knowledge base, pipelines and solver.

    \b
    Exit codes (every command):
      0    done
      1    error (the message says what and what to do)
      2    bad input or usage (file, record and field named)
      3    conflict (someone else changed it first; already running or resumed)
      4    database schema out of date: run `reasonflux db upgrade`; or not one this code can upgrade
           (a revision it does not know, or a schema no version made): nothing was changed
      5    the work failed: every unit (or solve session) failed; the run is recorded failed
      6    partly failed: some units (or sessions) failed, the rest succeeded
      130  interrupted (Ctrl-C); 143 terminated (SIGTERM): the run is recorded interrupted
    """
    ctx.obj = AppContext(database_url=database_url)
    ctx.call_on_close(ctx.obj.close)


def _register_builtin() -> None:
    from kb.cli import db as db_cmds
    from kb.cli import sql as sql_cmds
    from kb.cli import template_search as template_search_cmds
    from kb.cli import templates as templates_cmds

    for module in (db_cmds, templates_cmds, template_search_cmds, sql_cmds):
        module.register(cli)


def _register_plugins() -> None:
    for ep in entry_points(group="reasonflux.commands"):
        ep.load()(cli)


_register_builtin()
_register_plugins()


def main() -> None:
    install_sigterm_handler()  # SIGTERM ends a command the way Ctrl-C does: runs recorded, cleanup run
    cli(prog_name="reasonflux")


if __name__ == "__main__":
    main()
