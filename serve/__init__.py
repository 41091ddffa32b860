"""Multi-round solving against the live knowledge base."""
