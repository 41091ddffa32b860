"""reasonflux-kb: the thought-template knowledge base (PostgreSQL + pgvector)."""

__version__ = "0.1.0"
