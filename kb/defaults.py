"""Defaults that commands show in their --help, apart from the modules that use them so that help loads
without the database drivers (SQLAlchemy, psycopg)."""

SQL_TIMEOUT_S = 30.0  # `reasonflux sql` (kb.readonly_query)
DATASET_LICENSE = (
    "unknown"  # an export's licence when no source of its data has a recorded one (pipelines.licences)
)
DB_SERVE_MAX_CLIENTS = (
    20  # `reasonflux db serve` (kb.reader_relay): clients at once, well under the server's own limit
)
DB_SERVE_LOGIN_TIMEOUT_S = 5.0  # a client that has not logged in by then is dropped
