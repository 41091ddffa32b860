"""The retrieval modes (kb.retrieval), apart so that CLI options can list them without numpy or SQLAlchemy."""

MODES = ("hybrid", "vector", "text", "hierarchical")
