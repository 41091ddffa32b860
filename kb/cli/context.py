"""State shared by every command: the database, opened on first use."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from kb.db import Database, connect


@dataclass
class AppContext:
    database_url: str | None = None
    _db: Database | None = field(default=None, repr=False)

    def db(self, *, check_schema: bool = True, auto_upgrade: bool = True) -> Database:
        """The database; `db` subcommands relax the schema check so they can fix it."""
        if self._db is None:
            self._db = connect(self.database_url, check_schema=check_schema, auto_upgrade=auto_upgrade)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None


pass_app = click.make_pass_decorator(AppContext)
