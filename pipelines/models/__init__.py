"""Base models and navigators by name: the catalogue of downloadable models, `models get|add|list|show`, the
one name resolver every role spec, `--base-model`, `loop` and `serve` go through, and GGUF export."""
