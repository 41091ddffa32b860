"""OpenAI compatibility, the response: a completion, its chunks and `usage`, from the solver's sessions (one
per choice), as vLLM's server answers (the request side is serve.http.openai_request).

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
from typing import Any

from kb.output import dumps, to_jsonable
from kb.secrets import scrub
from serve.solve_events import RoundFinished, SessionDone, SessionError, SolveEvent, SolveResult

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
    return to_jsonable(r.public())


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


def _round_line(event: RoundFinished) -> str | None:
    adj = event.adjustment
    if event.kind == "plan" and adj.get("trajectory"):
        return (
            f"[plan] {len(adj['trajectory'])} steps: "
            + "; ".join(s["text"] for s in adj["trajectory"])
            + "\n"
        )
    if event.kind == "step":
        tpl = (adj.get("template") or {}).get("name", "no template")
        return (
            f"[round {event.round_no}] step {adj.get('step_no')}/{adj.get('n_steps')} with {tpl}: "
            f"{adj.get('verdict') or 'ended'}\n"
        )
    return None


async def merged(streams: list[AsyncIterator[SolveEvent]]) -> AsyncIterator[tuple[int, SolveEvent]]:
    """(index, event) from several sessions' event streams, as each arrives."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, events: AsyncIterator[SolveEvent]) -> None:
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
    events: AsyncIterator[tuple[int, SolveEvent]],
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
        if isinstance(event, RoundFinished):
            for comment, text in _round_pieces(event, c, progress=progress, structured=structured):
                yield text if comment else chunk(i, {"content": text})
        elif isinstance(event, SessionDone):
            r = event.result
            results.append(r)
            if delta := _final_delta(r, c, structured):
                yield chunk(i, delta)
            yield chunk(
                i, {}, finish_reason(r, c.truncated), session_id=r.session_id, reasonflux=session_summary(r)
            )
        elif isinstance(event, SessionError):
            yield chunk(i, {"content": f"\nerror: {event.message}"})
            yield chunk(i, {}, "stop")
    if include_usage and results:
        yield chunk(None, usage=usage(results, sum(c.tokens for c in shown)))
    yield "data: [DONE]\n\n"


def _round_pieces(
    event: RoundFinished, c: _Choice, *, progress: bool, structured: bool
) -> list[tuple[bool, str]]:
    """What a finished round shows of a choice, as (is an SSE comment, text): its progress line (in the
    content when the client asked for progress, else as a comment, which clients skip), then a step result
    the navigator accepted."""
    out = []
    line = _round_line(event)
    if line and progress and (text := c.show(line)):
        out.append((False, text))
    elif line and not progress:
        out.append((True, ": " + scrub(" ".join(line.split())) + "\n\n"))
    if not structured and (result := event.accepted_result) and (text := c.piece(result)):
        out.append((False, text))
    return out


def _final_delta(r: SolveResult, c: _Choice, structured: bool) -> dict[str, Any] | None:
    """The last delta of a choice: its final answer line, the formatted answer, or the refusal saying why
    the answer could not be formatted."""
    if not structured:
        text = c.piece(final_line(r))
        return {"content": text} if text else None
    if r.formatted is not None:
        text = c.show(r.formatted)
        return {"content": text} if text else None
    refusal = r.format_error or final_line(r)
    c.tokens += count_tokens(refusal)
    return {"refusal": refusal}
