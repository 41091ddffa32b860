"""The one backend registry. Real backends and the scripted test backend register the same way."""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from typing import Any

from kb.errors import KbError
from pipelines.llm.base import Backend

_FACTORIES: dict[str, Callable[..., Backend]] = {}
# Modules imported on first use, so heavy or optional dependencies (vllm) load only when chosen.
_LAZY: dict[str, str] = {
    "scripted": "pipelines.llm.scripted",
    "transformers": "pipelines.llm.transformers_backend",
    "openai": "pipelines.llm.openai_backend",
    "vllm": "pipelines.llm.vllm_backend",
    "toy-world": "pipelines.toy_world",  # the controlled world's scripted inference role (pipelines.loop's proof)
}
# One instance per (backend, options): a model used for two roles is loaded once.
_INSTANCES: dict[tuple[str, str], Backend] = {}
_INSTANCES_LOCK = threading.Lock()


def register_backend(name: str) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    def decorate(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        _FACTORIES[name] = factory
        return factory

    return decorate


def available_backends() -> list[str]:
    return sorted(set(_FACTORIES) | set(_LAZY))


def create_backend(name: str, **options: Any) -> Backend:
    if name not in _FACTORIES and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in _FACTORIES:
        raise KbError(f"unknown LLM backend {name!r}; available: {', '.join(available_backends())}")
    return _FACTORIES[name](**options)


def _cache_key(name: str, options: dict[str, Any]) -> tuple[str, str]:
    return name, json.dumps(options, sort_keys=True, default=repr)


def get_backend(name: str, **options: Any) -> Backend:
    """The shared instance for (name, options), created on first use."""
    key = _cache_key(name, options)
    with _INSTANCES_LOCK:
        if key not in _INSTANCES:
            _INSTANCES[key] = create_backend(name, **options)
        return _INSTANCES[key]


def clear_backend_cache() -> None:
    with _INSTANCES_LOCK:
        _INSTANCES.clear()
