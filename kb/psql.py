"""What tools need to reach the database themselves: its libpq URL (`reasonflux db url`) and psql
(`reasonflux db shell`)."""

from __future__ import annotations

import shutil

from sqlalchemy.engine import make_url

from kb.errors import KbError


def libpq_url(url: str) -> str:
    """URL as libpq (psql, psycopg, SQLAlchemy's default driver) spells it: no '+driver' suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def psql_path() -> str:
    path = shutil.which("psql")
    if path is None:
        raise KbError(
            "psql is not installed (e.g. `apt-get install postgresql-client`); "
            "`reasonflux db url` prints the URL for any other client"
        )
    return path
