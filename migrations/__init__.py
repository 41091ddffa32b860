"""Alembic migrations for the reasonflux-kb schema (see kb.migrate)."""
