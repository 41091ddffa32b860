"""The one backend registry. Real backends and the scripted test backend register the same way."""

from __future__ import annotations

import importlib
import inspect
import json
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from kb.errors import KbError
from pipelines.llm.base import Backend

_FACTORIES: dict[str, Callable[..., Backend]] = {}
# The options each backend accepts (None: any, passed on to the engine), so configs can refuse the rest.
_OPTIONS: dict[str, frozenset[str] | None] = {}
# Modules imported on first use, so heavy or optional dependencies (vllm) load only when chosen.
_LAZY: dict[str, str] = {
    "scripted": "pipelines.llm.scripted",
    "transformers": "pipelines.llm.transformers_backend",
    "openai": "pipelines.llm.openai_backend",
    "vllm": "pipelines.llm.vllm_backend",
}
# Backends that live outside pipelines/ (the demo package's play-along model and toy world) plug in through
# this entry point group, name -> module, the way commands do (`reasonflux.commands`): found by name on first
# use, so no production module imports them.
ENTRY_POINTS = "reasonflux.backends"
# One instance per (backend, options): a model used for two roles is loaded once.
_INSTANCES: dict[tuple[str, str], Backend] = {}
_INSTANCES_LOCK = threading.Lock()


def register_backend(
    name: str, options: type | None = None, also: tuple[str, ...] = ()
) -> Callable[[Callable[..., Backend]], Callable[..., Backend]]:
    """Register FACTORY under NAME; OPTIONS is the class whose constructor's keyword arguments are the
    backend's options (a `**engine_options`-style catch-all means any option is passed on), ALSO more
    option names that a consumer of the role reads."""

    def decorate(factory: Callable[..., Backend]) -> Callable[..., Backend]:
        _FACTORIES[name] = factory
        known = _constructor_options(options) if options is not None else None
        _OPTIONS[name] = known | frozenset(also) if known is not None else None
        return factory

    return decorate


def _constructor_options(cls: type) -> frozenset[str] | None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD and p.name != "_" for p in params):  # `**_` only swallows; others pass on
        return None
    return frozenset(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def _load(name: str) -> None:
    """Import the module that registers backend NAME, if it is not registered yet."""
    if name in _FACTORIES:
        return
    if name in _LAZY:
        importlib.import_module(_LAZY[name])
        return
    for ep in entry_points(group=ENTRY_POINTS, name=name):
        ep.load()
        return


def backend_options(name: str) -> frozenset[str] | None:
    """The option names backend NAME accepts, or None if it passes any on (or did not say)."""
    _load(name)
    return _OPTIONS.get(name)


def available_backends() -> list[str]:
    return sorted(set(_FACTORIES) | set(_LAZY) | {ep.name for ep in entry_points(group=ENTRY_POINTS)})


def create_backend(name: str, **options: Any) -> Backend:
    _load(name)
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
