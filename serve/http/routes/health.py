"""GET /healthz: the database and each role's backend, really asked (never needs the token)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from kb import __version__
from kb.secrets import scrub
from pipelines.llm.base import ChatRequest, SamplingParams
from serve.http.service import SolveService, get_service

HEALTH_TTL_S = 10.0  # backend probes are cached this long, so frequent health checks cost no LLM calls

router = APIRouter(tags=["service"])


def probe_backends(backends: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One one-token request to each distinct backend (a shared one is asked once)."""
    out, seen = {}, {}
    for role, backend in backends.items():
        if id(backend) not in seen:
            seen[id(backend)] = _probe(role, backend)
        out[role] = {"backend": backend.name, "model": backend.model, **seen[id(backend)]}
    return out


def _probe(role: str, backend: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        request = ChatRequest(
            [{"role": "user", "content": "Reply OK."}], SamplingParams(max_tokens=1), tags={"health": role}
        )
        [c] = backend.generate([request])
        error = c.error
    except Exception as e:  # noqa: BLE001 - a backend that raises is what health reports
        error = f"{type(e).__name__}: {e}"
    return {
        "ok": error is None,
        "error": scrub(error),
        "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
    }


@router.get("/healthz")
async def healthz(
    backends: bool = Query(True, description="Also ask each role's backend (cached a few seconds)."),
    service: SolveService = Depends(get_service),
) -> JSONResponse:
    def ping() -> bool:
        with service.db.engine.connect() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar() == 1

    body: dict[str, Any] = {"status": "ok", "version": __version__}
    try:
        body["database"] = await anyio.to_thread.run_sync(ping)
    except Exception as e:  # noqa: BLE001
        body.update(status="error", database=False, error=type(e).__name__)
    if backends:
        cache = service.health_cache
        if cache.get("at", -HEALTH_TTL_S) + HEALTH_TTL_S < time.monotonic():
            roles = await anyio.to_thread.run_sync(probe_backends, service.solver.backends)
            cache.update(roles=roles, at=time.monotonic())
        body["roles"] = cache["roles"]
        if not all(r["ok"] for r in body["roles"].values()):
            body["status"] = "error"
    else:
        body["roles"] = service.solver.describe_backends()
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
