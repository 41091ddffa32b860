"""Defaults that commands show in their --help, apart from the modules that use them so that help loads
without the database drivers (SQLAlchemy, psycopg)."""

SQL_TIMEOUT_S = 30.0  # `reasonflux sql` (kb.sql_readonly)
DATASET_LICENSE = "unknown"  # the KB's content comes from many sources: the exporter says which licence applies
