"""State shared by every command: the database, opened on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from kb.db import Database


@dataclass
class AppContext:
    database_url: str | None = None
    _db: Database | None = field(default=None, repr=False)

    def db(
        self, *, check_schema: bool = True, auto_upgrade: bool = True, mark_orphans: bool = True
    ) -> Database:
        """The database; `db` subcommands relax the schema check so they can fix it. Opening it marks runs
        whose owner is gone as interrupted (kb.runs), unless MARK_ORPHANS is off (`db doctor` shows them)."""
        if self._db is None:
            from kb.db import connect  # the database layer (SQLAlchemy) loads only for commands that use it
            from kb.runs import mark_orphaned_runs

            self._db = connect(self.database_url, check_schema=check_schema, auto_upgrade=auto_upgrade)
            if check_schema and mark_orphans:  # the schema is current, so runs have leases to check
                _report_orphans(mark_orphaned_runs(self._db))
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None


pass_app = click.make_pass_decorator(AppContext)


def _report_orphans(marked: dict[str, list[int]]) -> None:
    """Runs whose owner is gone were marked interrupted on opening the KB; say which (stderr)."""
    for kind, ids in marked.items():
        click.echo(
            f"marked {kind} run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} interrupted: "
            "the process that owned it is gone (resume by running the command again"
            f"{'' if kind == 'pipeline' else ' with --resume RUN_ID'})",
            err=True,
        )
