"""GET /v1/templates/search: live KB retrieval."""

from __future__ import annotations

from functools import partial

import anyio
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from kb.output import to_jsonable
from kb.retrieval import search_templates
from serve.http.guard import documented_bearer
from serve.http.service import SolveService, get_service

router = APIRouter(tags=["templates"], dependencies=[Depends(documented_bearer)])


@router.get("/v1/templates/search")
async def templates_search(
    q: str = Query(..., min_length=1, max_length=2000),
    k: int = Query(5, ge=1, le=50),
    mode: str = Query("hybrid"),
    category: str | None = None,
    tags: list[str] | None = Query(None),
    service: SolveService = Depends(get_service),
):
    hits = await anyio.to_thread.run_sync(
        partial(search_templates, service.db, q, k=k, mode=mode, category=category, tags=tags)
    )
    return JSONResponse(to_jsonable({"query": q, "mode": mode, "hits": [h.to_dict() for h in hits]}))
