"""The `reasonflux` command line: a thin click layer over the library.

One module per command group. Groups that live outside kb/ (pipelines, serve)
plug in through the `reasonflux.commands` entry point, so kb/ imports neither.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

import click

from kb import __version__
from kb.cli.context import AppContext, pass_app
from kb.errors import KbError
from kb.output import terminal_safe
from kb.secrets import scrub
from kb.signals import Terminated, install_sigterm_handler

__all__ = ["AppContext", "cli", "deprecated_alias", "main", "pass_app"]


class _Group(click.Group):
    """Turns KbError, the database errors a user can act on, Ctrl-C and SIGTERM into one clean line and an
    exit code, for every subcommand.

    Commands load lazily: a command group's module is imported (and registers itself) only when that
    command runs or help lists it, so `reasonflux templates list` never imports the solver or training
    stack. Command modules keep heavy libraries (SQLAlchemy, numpy, torch, fastapi...) inside their
    functions, so listing every command in --help stays fast too.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy: dict[str, list[str]] = {}
        self._loaded: set[str] = set()

    def add_lazy(self, name: str, module: str) -> None:
        """Command NAME comes from MODULE, whose register(cli) adds it; imported on first use."""
        self._lazy.setdefault(name, []).append(module)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in self._lazy.pop(cmd_name, []):
            if module not in self._loaded:
                self._loaded.add(module)
                importlib.import_module(module).register(self)
        return self.commands.get(cmd_name)

    def load_all(self) -> None:
        for name in list(self._lazy):
            self.get_command(None, name)  # type: ignore[arg-type]

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KbError as e:
            raise _UserError(str(e), e.exit_code) from None
        except Terminated:
            raise _UserError("terminated (SIGTERM)", 143) from None
        except KeyboardInterrupt:
            raise _UserError("interrupted (Ctrl-C)", 130) from None
        except Exception as e:
            mapped = _database_error(e)
            if mapped is None:
                raise
            raise mapped from None


def _database_error(e: Exception) -> _UserError | None:
    """The database errors a user can act on, as one line; None for anything else. Only when the database
    layer was imported at all (otherwise e cannot be one of its errors), so plain commands never load it."""
    if "sqlalchemy" not in sys.modules and "psycopg" not in sys.modules:
        return None
    import psycopg
    import sqlalchemy as sa

    from kb.db import SchemaOutOfDate, db_error_reason

    if isinstance(e, SchemaOutOfDate):
        return _UserError(str(e), 4)
    if isinstance(e, (sa.exc.OperationalError, psycopg.OperationalError)):  # server gone mid-command
        return _UserError(f"lost the database connection: {db_error_reason(e)}", 1)
    if isinstance(
        e, sa.exc.DataError
    ):  # a value the checks up front did not foresee; its transaction rolled back
        return _UserError(f"the database refused a value: {db_error_reason(e)}", 2)
    return None


class _UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(terminal_safe(scrub(message)))
        self.exit_code = exit_code


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default=None,
    metavar="URL",
    help="PostgreSQL server to use (default: the embedded server under REASONFLUX_HOME).",
)
@click.version_option(__version__, prog_name="reasonflux")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None) -> None:
    """ReasonFlux thought-template knowledge base, pipelines and solver.

    \b
    Exit codes (every command):
      0    done
      1    error (the message says what and what to do; a write that failed, e.g. a full
           disk, names the file; a training launch silent past --progress-timeout)
      2    bad input or usage (file, record and field named)
      3    conflict (someone else changed it first; already running, e.g. a loop of that
           name, or resumed; the destination holds something else)
      4    database schema out of date: run `reasonflux db upgrade`; or not one this code can upgrade
           (a revision it does not know, or a schema no version made): nothing was changed
      5    the work failed: every unit (or solve session) failed; the run is recorded failed
      6    partly failed: some units (or sessions) failed, the rest succeeded
      7    timed out: a query ran past --timeout, or a lock another session holds (named) stayed held
      130  interrupted (Ctrl-C); 143 terminated (SIGTERM): the run is recorded interrupted
    """
    ctx.obj = AppContext(database_url=database_url)
    ctx.call_on_close(ctx.obj.close)


def deprecated_alias(command: click.Command, old_name: str) -> click.Command:
    """OLD_NAME for COMMAND, kept for a release after a rename: hidden from help, and it says on stderr to use
    the new name, then runs COMMAND."""

    def callback(*args, **kwargs):
        click.echo(
            f"note: `reasonflux {old_name}` is now `reasonflux {command.name}`; the old name will be "
            "removed in a later release",
            err=True,
        )
        return click.get_current_context().invoke(command.callback, *args, **kwargs)

    return click.Command(
        old_name,
        params=command.params,
        callback=callback,
        hidden=True,
        help=f"Deprecated: use `reasonflux {command.name}`.\n\n{command.help or ''}",
        context_settings=command.context_settings,
    )


# Built-in commands and the modules that register them (in order: template_search adds to `templates`).
BUILTIN: dict[str, list[str]] = {
    "db": ["kb.cli.db"],
    "templates": ["kb.cli.templates", "kb.cli.template_search"],
    "sql": ["kb.cli.sql"],
}


def _register_builtin() -> None:
    for name, modules in BUILTIN.items():
        for module in modules:
            cli.add_lazy(name, module)


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
