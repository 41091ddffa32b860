"""LLM backends behind one small interface, chosen by name from one registry."""

from pipelines.llm.base import Backend, ChatRequest, Completion, SamplingParams
from pipelines.llm.registry import (
    available_backends,
    clear_backend_cache,
    create_backend,
    get_backend,
    register_backend,
)

__all__ = [
    "Backend",
    "ChatRequest",
    "Completion",
    "SamplingParams",
    "available_backends",
    "clear_backend_cache",
    "create_backend",
    "get_backend",
    "register_backend",
]
