"""POST /v1/solve: a problem -> the session's answer (stream: SSE per event), and GET /v1/sessions/{id}:
a stored trace (?render=true adds the readable text)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse

from kb.output import dumps, to_jsonable
from kb.secrets import scrub
from serve.http.errors import SESSION_HEADER, backend_down
from serve.http.guard import documented_bearer
from serve.http.schemas import SolveRequest, SolveResponse, solve_response
from serve.http.service import SolveService, get_service, replay, session_header
from serve.traces.render import render_trace
from serve.traces.store import get_session

MAX_ID = 2**63 - 1

router = APIRouter(dependencies=[Depends(documented_bearer)])


@router.post(
    "/v1/solve",
    tags=["solve"],
    response_model=SolveResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}},
)
async def solve(body: SolveRequest, service: SolveService = Depends(get_service)):
    kw = service.limits(body.problem, body.max_rounds, body.max_tokens)
    kw.update(problem_id=body.problem_id, reference=body.reference)
    if body.stream:
        held, rest = await service.started(body.problem, **kw)

        async def sse() -> AsyncIterator[str]:
            async for event in replay(held, rest):
                yield f"event: {event.event}\ndata: {dumps(scrub(event.to_dict()))}\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers=session_header(held))
    result = await service.solve(body.problem, **kw)
    if (down := backend_down(result)) is not None:
        raise down
    return JSONResponse(
        scrub(to_jsonable(solve_response(result))), headers={SESSION_HEADER: str(result.session_id)}
    )


@router.get("/v1/sessions/{session_id}", tags=["sessions"])
async def session(
    session_id: int = Path(ge=1, le=MAX_ID),
    render: bool = Query(False, description="Add the readable trace text."),
    service: SolveService = Depends(get_service),
):
    data = await anyio.to_thread.run_sync(get_session, service.db, session_id)
    if render:
        data["trace"] = render_trace(data)
    return JSONResponse(scrub(to_jsonable(data)))
