"""Pipeline stages that read from and write to the knowledge base."""
