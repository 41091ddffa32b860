"""OpenAI compatibility, the request: what /v1/chat/completions takes, so that clients cannot tell it from
vLLM's server (docs/serving.md has the table, request -> behaviour).

Every chat-completions parameter is named and either honoured, ignored with a warning header, or refused
with a 400 naming it; an unknown one is a 400 (`unknown_parameter`). What the client gets back is
serve.http.openai_response.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.llm.base import SAMPLING_EXTRAS
from serve.http.errors import ApiError

WARNING_HEADER = "Warning"


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
