"""`reasonflux llm check`: one tiny request per configured role, to see that each backend answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kb.db import Database
from kb.secrets import scrub
from pipelines.llm.base import ChatRequest, SamplingParams
from pipelines.llm.config import LlmConfig, RoleConfig
from pipelines.llm.registry import get_backend
from pipelines.llm.roles import role_config

PROBE = [{"role": "user", "content": "Reply with the word OK."}]
ROLES = ("navigator", "inference", "miner")


def roles_to_check(
    config: LlmConfig, flags: dict[str, str | None], db: Callable[[], Database] | None = None
) -> dict[str, RoleConfig]:
    """Every role of the config file, with the flags on top (a flag beats the file), through the one role
    resolver; DB opens the KB, only when a flag names a registered navigator."""

    def one(name: str) -> RoleConfig:
        try:
            return role_config(None, config, name, flags.get(name))
        except ValueError:  # a registered navigator's name: its path is in the KB
            if db is None:
                raise
            return role_config(db(), config, name, flags.get(name))

    names = [*config.roles, *(r for r, spec in flags.items() if spec and r not in config.roles)]
    return {name: one(name) for name in names}


def check_role(name: str, role: RoleConfig, *, max_tokens: int = 8) -> dict[str, Any]:
    """Send PROBE once (no retries) and report what came back, or why nothing did."""
    options = dict(role.options)
    if role.backend == "openai":  # one attempt: a check reports, it does not wait out a backoff
        options["max_retries"] = 0
    row: dict[str, Any] = {
        "role": name,
        "backend": role.backend,
        "model": options.get("model") or options.get("model_path"),
        "ok": False,
        "latency_ms": None,
        "reply": None,
        "error": None,
    }
    t0 = time.perf_counter()
    try:
        backend = get_backend(role.backend, **options)
        row["model"] = backend.model
        [c] = backend.generate(
            [ChatRequest(PROBE, SamplingParams(max_tokens=max_tokens), tags={"check": name})]
        )
    except Exception as e:  # noqa: BLE001 - a backend that cannot even start is what the check reports
        row["error"] = scrub(f"{type(e).__name__}: {e}")
        return row
    row["latency_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    if c.error:
        row["error"] = scrub(c.error)
    else:
        row.update(ok=True, reply=c.text[:60], tokens=c.prompt_tokens + c.completion_tokens)
    return row
