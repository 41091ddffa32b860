"""The one backend registry. Real backends and the scripted test backend register the same way."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from kb.errors import KbError
from pipelines.llm.base import Backend

_FACTORIES: dict[str, Callable[..., Backend]] = {}
# Modules imported on first use, so heavy or optional dependencies (vllm) load only when chosen.
_LAZY: dict[str, str] = {
    "scripted": "pipelines.llm.scripted",
}


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
