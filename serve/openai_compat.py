"""OpenAI compatibility: what /v1/chat/completions takes and answers, so that clients cannot tell it from
vLLM's server (docs/serving.md has the table, request -> behaviour).

- the request schema: every chat-completions parameter is named and either honoured, ignored with a
  warning header, or refused with a 400 naming it; an unknown one is a 400 (`unknown_parameter`);
- the error shape (`{"error": {message, type, code, param}}`) and how a request's validation errors map
  onto it (always a 400 `invalid_request_error` naming the first bad field in `param`);
- the bodies: a completion, its chunks and `usage`, from the solver's sessions (one per choice).

What a client sees of a session is its answer: the accepted steps' results and the final answer line, or
with `response_format` the answer as JSON (or, when it could not be put so, `message.refusal` saying why).
`max_tokens` caps that visible text, as in OpenAI and vLLM; the tokens the session spent reasoning count
in `usage.completion_tokens` and `completion_tokens_details.reasoning_tokens`, as for OpenAI's reasoning
models. The session's own budget is the extension field `reasonflux.token_budget`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kb.output import dumps, to_jsonable
from kb.secrets import scrub
from pipelines.llm.base import SAMPLING_EXTRAS
from serve.solver import SolveResult

WARNING_HEADER = "Warning"


class ApiError(Exception):
    """An error answered in OpenAI's shape with STATUS."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "invalid_request",
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind
        self.param, self.headers = param, headers


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which OpenAI clients turn into typed exceptions (scrubbed: backend errors may
    echo a key)."""
    return {"error": {"message": scrub(message), "type": kind, "code": code, "param": param}}


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """A request's validation errors (FastAPI's RequestValidationError.errors()) as one 400 naming the first
    bad field, as OpenAI and vLLM answer a body they cannot take."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    param = ".".join(loc[1:] if loc[:1] in (["body"], ["query"], ["path"]) else loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "malformed")
        return ApiError(400, f"the request body is not valid JSON: {reason}", code="invalid_json")
    # worded as OpenAI's API words them
    if kind == "extra_forbidden":
        return ApiError(400, f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)
    if kind == "missing" and param is not None:
        return ApiError(
            400, f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
        )
    if param is None:  # the body as a whole: absent, or not a JSON object (or sent without its content type)
        return ApiError(
            400,
            "the request body must be a JSON object (Content-Type: application/json)",
            code="invalid_json",
        )
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in errors
    )
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) or kind == "missing" else "invalid_value"
    return ApiError(400, f"invalid request: {problems}", code=code, param=param)


# ------------------------------------------------------------------ the request


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM's; usage comes once, at the end, either way


class ReasonfluxOptions(BaseModel):
    """The extension fields (`extra_body={"reasonflux": {...}}`): what a session may spend and show."""

    model_config = ConfigDict(extra="forbid")

    token_budget: int | None = Field(
        None,
        ge=1,
        description="The session's tokens, prompt and completion, "
        "both roles; at most the server's --token-budget, which is the default.",
    )
    max_rounds: int | None = Field(None, ge=1, description="At most the server's --max-rounds.")
    progress: bool = Field(False, description="Progress lines in the streamed content.")


class ChatCompletionRequest(BaseModel):
    """Every chat-completions parameter is named here and honoured, ignored (with a Warning header) or
    refused (docs/serving.md); an unknown one is a 400 naming it, never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # honoured
    max_tokens: int | None = Field(None, ge=1, description="Caps the completion the client sees.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1, description="Independent sessions, one choice each.")
    user: str | None = None
    metadata: dict[str, str] | None = None
    response_format: dict[str, Any] | None = None
    top_k: int | None = Field(None, ge=-1, description="vLLM's; where a role's backend takes it.")
    min_p: float | None = Field(None, ge=0, le=1, description="vLLM's; where a role's backend takes it.")
    repetition_penalty: float | None = Field(
        None, gt=0, description="vLLM's; where a role's backend takes it."
    )
    reasonflux: ReasonfluxOptions = Field(default_factory=ReasonfluxOptions)
    reasonflux_progress: bool = Field(False, description="The older spelling of reasonflux.progress.")
    # accepted and ignored only when neutral ("none"), else refused
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    # refused unless absent or neutral
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    web_search_options: dict[str, Any] | None = None

    @property
    def progress(self) -> bool:
        return self.reasonflux.progress or self.reasonflux_progress

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def completion_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def refused(body: ChatCompletionRequest) -> tuple[str, str] | None:
    """The first parameter this server cannot honour, with why; None when all can be."""
    no_tools = body.tool_choice == "none"  # tools the model may not call change nothing: accepted, ignored
    checks = (
        (
            "stream_options",
            body.stream_options is not None and not body.stream,
            "stream_options can only be given with stream=true",
        ),
        (
            "tools",
            bool(body.tools) and not no_tools,
            'the solver does not call tools (only tool_choice="none")',
        ),
        ("tool_choice", body.tool_choice not in (None, "none"), "the solver does not call tools"),
        (
            "functions",
            bool(body.functions) and body.function_call != "none",
            "the solver does not call functions",
        ),
        ("function_call", body.function_call not in (None, "none"), "the solver does not call functions"),
        ("stop", bool(body.stop), "the solver's rounds use their own stop sequences"),
        ("logprobs", bool(body.logprobs) or body.top_logprobs is not None, "no log-probabilities"),
        ("presence_penalty", bool(body.presence_penalty), "not supported"),
        ("frequency_penalty", bool(body.frequency_penalty), "not supported"),
        ("logit_bias", bool(body.logit_bias), "not supported"),
        ("store", bool(body.store), "sessions are always stored in the KB; `store` cannot change that"),
        ("modalities", body.modalities not in (None, ["text"]), "only text"),
        ("audio", body.audio is not None, "only text"),
        ("prediction", body.prediction is not None, "not supported"),
        (
            "reasoning_effort",
            body.reasoning_effort is not None,
            "use reasonflux.token_budget to bound a session",
        ),
        ("service_tier", body.service_tier not in (None, "auto", "default"), "not supported"),
        ("web_search_options", body.web_search_options is not None, "no web search"),
    )
    return next(((name, why) for name, bad, why in checks if bad), None)


def answer_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema the answer must follow (None for text), or a 400 naming what is wrong with it."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise ApiError(
            400,
            f"response_format.type must be text, json_object or json_schema, not {kind!r}",
            code="invalid_value",
            param="response_format.type",
        )
    spec = (response_format or {}).get("json_schema")
    if not isinstance(spec, dict):
        raise ApiError(
            400,
            "response_format.json_schema is required with type json_schema",
            code="invalid_value",
            param="response_format.json_schema",
        )
    schema = spec.get("schema", {"type": "object"})
    where = "response_format.json_schema.schema"
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ApiError(
            400, f"{where} must be a JSON schema whose root is an object", code="invalid_value", param=where
        )
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ApiError(
            400, f"{where} is not a valid JSON schema: {e.message[:300]}", code="invalid_value", param=where
        ) from None
    return schema


def problem_from_messages(messages: list[ChatMessage]) -> str:
    """The last user message's text (text parts of a multi-part message joined)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role != "user":
            continue
        if isinstance(m.content, str):
            return m.content
        return "\n".join(_text_parts(m.content or [], f"messages[{i}].content"))
    raise ApiError(
        400, "messages must contain a user message with the problem", code="no_user_message", param="messages"
    )


def _text_parts(parts: list[dict[str, Any]], where: str) -> list[str]:
    texts = []
    for j, part in enumerate(parts):
        if part.get("type") != "text":
            continue
        text = part.get("text", "")
        if not isinstance(text, str):
            raise ApiError(
                400,
                f"{where}[{j}].text must be a string, not {type(text).__name__}",
                code="invalid_type",
                param=f"{where}[{j}].text",
            )
        texts.append(text)
    return texts


def sampling_extras(
    body: ChatCompletionRequest, backends: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{role: the vLLM sampling extras its backend takes (`sampling_extras`)}, and those no role takes."""
    given = {k: getattr(body, k) for k in SAMPLING_EXTRAS if getattr(body, k) is not None}
    if given.get("top_k", 1) <= 0:  # vLLM's "no top-k" (-1 or 0): every backend's default
        del given["top_k"]
    per_role = {
        role: {k: v for k, v in given.items() if k in getattr(b, "sampling_extras", ())}
        for role, b in backends.items()
    }
    return per_role, [k for k in given if not any(k in taken for taken in per_role.values())]


def warning(ignored: list[str]) -> dict[str, str]:
    """The Warning header (RFC 7234's 299, "miscellaneous persistent warning") for ignored parameters."""
    if not ignored:
        return {}
    return {WARNING_HEADER: f'299 reasonflux "ignored: {", ".join(ignored)} (no role\'s backend takes them)"'}


# ------------------------------------------------------------------ what the client sees of a session


_TOKEN = re.compile(r"\s*\S+")


def count_tokens(text: str) -> int:
    """Visible tokens, counted as whitespace-separated words (the server has no tokenizer of its own)."""
    return len(_TOKEN.findall(text))


def cap(text: str, limit: int | None) -> tuple[str, bool]:
    """TEXT cut to LIMIT tokens, and whether it was cut."""
    if limit is None:
        return text, False
    words = _TOKEN.findall(text)
    return ("".join(words[:limit]), True) if len(words) > limit else (text, False)


def result_of(event: dict[str, Any]) -> SolveResult:
    return SolveResult(**{k: v for k, v in event.items() if k in SolveResult.__dataclass_fields__})


def final_line(r: SolveResult) -> str:
    if r.answer is None:
        return f"No answer ({r.status}: {r.reason or 'no final answer'})."
    return f"Final answer: \\boxed{{{r.answer}}}"


def answer_text(r: SolveResult) -> str:
    """The completion of a text session: the accepted steps' results, then the final answer line."""
    return "\n\n".join([*(s.strip() for s in r.steps if s.strip()), final_line(r)])


@dataclass
class Visible:
    """One choice as the client sees it."""

    content: str | None
    refusal: str | None
    truncated: bool

    @classmethod
    def of(cls, r: SolveResult, structured: bool, limit: int | None) -> Visible:
        if not structured:
            text, cut = cap(answer_text(r), limit)
            return cls(text, None, cut)
        if r.formatted is None:
            return cls(None, r.format_error or final_line(r), False)
        text, cut = cap(r.formatted, limit)
        return cls(text, None, cut)

    @property
    def tokens(self) -> int:
        return count_tokens(self.content or self.refusal or "")


def finish_reason(r: SolveResult, truncated: bool) -> str:
    # "length" when max_tokens cut the completion, or a round or token limit ended the session
    return "length" if truncated or r.status == "limit" else "stop"


def usage(results: list[SolveResult], visible_tokens: int) -> dict[str, Any]:
    """The sessions' tokens; completion counts every generated token, the hidden ones as reasoning."""
    prompt = sum(int(t.get("prompt", 0)) for r in results for t in r.tokens.values())
    completion = sum(int(t.get("completion", 0)) for r in results for t in r.tokens.values())
    completion = max(completion, visible_tokens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": completion - visible_tokens},
    }


def session_summary(r: SolveResult) -> dict[str, Any]:
    fields = (
        "session_id",
        "status",
        "answer",
        "correct",
        "reason",
        "rounds",
        "tokens",
        "latency_ms",
        "templates",
        "llm_calls",
    )
    return to_jsonable({**{k: getattr(r, k) for k in fields}, "total_tokens": r.total_tokens})


def chat_response(
    results: list[SolveResult], cid: str, created: int, model: str, *, structured: bool, limit: int | None
) -> dict[str, Any]:
    shown = [Visible.of(r, structured, limit) for r in results]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": v.content, "refusal": v.refusal},
            "finish_reason": finish_reason(r, v.truncated),
            "logprobs": None,
            "reasonflux": session_summary(r),
        }
        for i, (r, v) in enumerate(zip(results, shown))
    ]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(results, sum(v.tokens for v in shown)),
        "session_id": results[0].session_id,
        "reasonflux": session_summary(results[0]),
    }


# ------------------------------------------------------------------ streaming


def _round_line(event: dict[str, Any]) -> str | None:
    adj = event.get("adjustment") or {}
    if event.get("kind") == "plan" and adj.get("trajectory"):
        return (
            f"[plan] {len(adj['trajectory'])} steps: "
            + "; ".join(s["text"] for s in adj["trajectory"])
            + "\n"
        )
    if event.get("kind") == "step":
        tpl = (adj.get("template") or {}).get("name", "no template")
        return (
            f"[round {event.get('round_no')}] step {adj.get('step_no')}/{adj.get('n_steps')} with {tpl}: "
            f"{adj.get('verdict') or 'ended'}\n"
        )
    return None


def _accepted_result(event: dict[str, Any]) -> str | None:
    """The result of a step the navigator accepted: final from then on, so it is streamed at once."""
    if event.get("kind") == "step" and (event.get("adjustment") or {}).get("outcome") == "accepted":
        return (event.get("instantiation") or "").strip() or None
    return None


async def merged(streams: list[AsyncIterator[dict[str, Any]]]) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(index, event) from several sessions' event streams, as each arrives."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, events: AsyncIterator[dict[str, Any]]) -> None:
        try:
            async for event in events:
                await queue.put((i, event))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_ = len(tasks)
        while open_:
            i, event = await queue.get()
            if event is None:
                open_ -= 1
            else:
                yield i, event
    finally:
        for t in tasks:
            t.cancel()


class _Choice:
    """One choice of a stream: what it has shown so far, against max_tokens."""

    def __init__(self, limit: int | None):
        self.left, self.pieces, self.tokens, self.truncated = limit, 0, 0, False

    def show(self, text: str) -> str | None:
        """The part of TEXT still within max_tokens (None when nothing is left to show)."""
        if self.truncated:
            return None
        text, self.truncated = cap(text, self.left)
        shown = count_tokens(text)
        self.tokens += shown
        if self.left is not None:
            self.left -= shown
        return text or None

    def piece(self, text: str) -> str | None:
        """The next piece of the answer (pieces are separated by a blank line, as in answer_text)."""
        shown = self.show(("\n\n" if self.pieces else "") + text)
        self.pieces += 1
        return shown


async def chat_stream(
    events: AsyncIterator[tuple[int, dict[str, Any]]],
    n: int,
    cid: str,
    created: int,
    model: str,
    *,
    progress: bool,
    include_usage: bool,
    structured: bool,
    limit: int | None,
) -> AsyncIterator[str]:
    """OpenAI chunks. Each choice's answer is streamed as it is produced: a step's result as soon as the
    navigator accepts it (it cannot change after), the final line when the session ends; with
    response_format, the JSON once it is complete. Round progress goes into the content only when the
    client asked for it (reasonflux.progress); otherwise it is sent as SSE comments, which clients skip,
    and which keep the connection alive during long rounds. `usage` comes only with
    stream_options.include_usage, in a last chunk without choices."""

    def chunk(
        i: int | None, delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
    ) -> str:
        choices = (
            []
            if i is None
            else [{"index": i, "delta": delta or {}, "finish_reason": finish, "logprobs": None}]
        )
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **({"usage": None} if include_usage else {}),
            **extra,
        }
        return f"data: {dumps(scrub(body))}\n\n"

    shown = [_Choice(limit) for _ in range(n)]
    results: list[SolveResult] = []
    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    async for i, event in events:
        c = shown[i]
        if event["event"] == "round":
            line = _round_line(event)
            if line and progress and (text := c.show(line)):
                yield chunk(i, {"content": text})
            elif line and not progress:
                yield ": " + scrub(" ".join(line.split())) + "\n\n"
            if not structured and (result := _accepted_result(event)) and (text := c.piece(result)):
                yield chunk(i, {"content": text})
        elif event["event"] == "done":
            r = result_of(event)
            results.append(r)
            if not structured:
                text = c.piece(final_line(r))
                delta = {"content": text} if text else None
            elif r.formatted is not None:
                text = c.show(r.formatted)
                delta = {"content": text} if text else None
            else:
                delta = {"refusal": r.format_error or final_line(r)}
                c.tokens += count_tokens(delta["refusal"])
            if delta:
                yield chunk(i, delta)
            yield chunk(
                i, {}, finish_reason(r, c.truncated), session_id=r.session_id, reasonflux=session_summary(r)
            )
        elif event["event"] == "error":
            yield chunk(i, {"content": f"\nerror: {event['message']}"})
            yield chunk(i, {}, "stop")
    if include_usage and results:
        yield chunk(None, usage=usage(results, sum(c.tokens for c in shown)))
    yield "data: [DONE]\n\n"
