"""The OpenAI-compatible routes: GET /v1/models[/{id}] (the one model) and POST /v1/chat/completions (the
solver's answer, as vLLM's server answers; serve.http.openai_request and openai_response)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from kb.secrets import scrub
from serve.http import openai_request as oq
from serve.http import openai_response as orsp
from serve.http.errors import SESSION_HEADER, ApiError, backend_down
from serve.http.guard import documented_bearer
from serve.http.schemas import model_card
from serve.http.service import SolveService, get_service, joined, replay, session_header, with_sampling

router = APIRouter(tags=["openai"], dependencies=[Depends(documented_bearer)])


def _unknown_model(model_id: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"the model {model_id!r} does not exist; this server serves {served!r}",
        code="model_not_found",
        param="model",
    )


@router.get("/v1/models")
async def models(service: SolveService = Depends(get_service)) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(service.model_name)]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, service: SolveService = Depends(get_service)) -> dict[str, Any]:
    if model_id != service.model_name:
        raise _unknown_model(model_id, service.model_name)
    return model_card(service.model_name)


def _check(body: oq.ChatCompletionRequest, service: SolveService) -> None:
    """A 4xx for a request this server cannot answer as asked."""
    if body.model != service.model_name:
        raise _unknown_model(body.model, service.model_name)
    if (refused := oq.refused(body)) is not None:
        raise ApiError(
            400,
            f"{refused[0]} is not supported: {refused[1]}",
            code="unsupported_parameter",
            param=refused[0],
        )
    if body.n > service.max_concurrent:
        raise ApiError(
            400,
            f"n {body.n} exceeds this server's {service.max_concurrent} concurrent sessions",
            code="invalid_value",
            param="n",
        )


def _sessions(
    body: oq.ChatCompletionRequest, service: SolveService, problem: str, schema: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The solve() arguments of the request's n independent sessions (with a seed, each its own: seed,
    seed+1, ...), and the Warning header for the parameters no role's backend takes."""
    kw = service.limits(
        problem, body.reasonflux.max_rounds, body.reasonflux.token_budget, "reasonflux.token_budget"
    )
    extras, ignored = oq.sampling_extras(body, service.solver.backends)
    kws = [
        {
            **kw,
            "answer_schema": schema,
            "config": with_sampling(
                kw["config"],
                extras,
                temperature=body.temperature,
                top_p=body.top_p,
                seed=None if body.seed is None else body.seed + i,
            ),
        }
        for i in range(body.n)
    ]
    return kws, oq.warning(ignored)


@router.post("/v1/chat/completions")
async def chat_completions(body: oq.ChatCompletionRequest, service: SolveService = Depends(get_service)):
    _check(body, service)
    problem = oq.problem_from_messages(body.messages)
    schema = oq.answer_schema(body.response_format)
    kws, headers = _sessions(body, service, problem, schema)
    cid, created, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), service.model_name
    shown = {"structured": schema is not None, "limit": body.completion_cap}
    if body.stream:
        started = await asyncio.gather(*(service.started(problem, **k) for k in kws))
        events = orsp.merged([replay(held, rest) for held, rest in started])
        stream = orsp.chat_stream(
            events,
            body.n,
            cid,
            created,
            name,
            progress=body.progress,
            include_usage=body.include_usage,
            **shown,
        )
        sids = joined([session_header(held) for held, _ in started])
        return StreamingResponse(stream, media_type="text/event-stream", headers={**headers, **sids})
    results = await asyncio.gather(*(service.solve(problem, **k) for k in kws))
    for r in results:
        if (down := backend_down(r)) is not None:
            raise down
    return JSONResponse(
        scrub(orsp.chat_response(list(results), cid, created, name, **shown)),
        headers={**headers, SESSION_HEADER: ", ".join(str(r.session_id) for r in results)},
    )
