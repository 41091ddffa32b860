"""What a solve session produces, typed: its result and the events it emits while it runs.

    SessionStarted   the session row exists (its id is known)
    RoundFinished    a round (plan, step or final) was written to the trace; the same record is the
                     solve_round row (`row()`) and the event (`to_dict()`, without the navigator prompt)
    SessionDone      the session ended; carries its SolveResult
    SessionError     the solver itself raised (only the HTTP stream reports this: the session row says
                     failed already)

`to_dict()` is each event's wire form (the SSE `data:` of /v1/solve, `event` naming the kind) and
`event_from_dict` reads it back, so a client or test sees exactly what the solver emitted. The trace
tables keep their columns: a round's `row()` has the keys solve_round had before these types existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

PUBLIC_FIELDS = (
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
    "total_tokens",
)


def total_tokens(tokens: dict[str, Any] | None) -> int:
    """Prompt + completion tokens over the roles of a {role: {prompt, completion, ...}} record."""
    return sum(
        int(v.get("prompt", 0)) + int(v.get("completion", 0))
        for v in (tokens or {}).values()
        if isinstance(v, dict)
    )


@dataclass
class SolveResult:
    """One session's outcome: the one solve result type (the HTTP response and the OpenAI `reasonflux`
    summary are its PUBLIC_FIELDS)."""

    session_id: int
    status: str  # solved | failed | limit
    reason: str | None
    answer: str | None
    correct: bool | None
    rounds: int
    tokens: dict[str, Any]
    latency_ms: float
    templates: list[int] = field(default_factory=list)  # template version ids used, in order
    llm_calls: int = 0
    solution: str | None = None  # the result text of the last accepted step
    steps: list[str] = field(default_factory=list)  # the result texts of the accepted steps, in order
    # with an answer schema: the answer as a JSON object following it, or why it could not be put so
    formatted: str | None = None
    format_error: str | None = None

    @property
    def total_tokens(self) -> int:
        return total_tokens(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "total_tokens": self.total_tokens}
        if self.formatted is None and self.format_error is None:  # no answer schema was asked for
            del d["formatted"], d["format_error"]
        return d

    def public(self) -> dict[str, Any]:
        """What a client is shown of the session (the HTTP solve response, the OpenAI summary)."""
        d = self.to_dict()
        return {k: d[k] for k in PUBLIC_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SolveResult:
        """The result from its to_dict() (extra keys, such as an event's, are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class SessionStarted:
    event: ClassVar[str] = "session"
    session_id: int
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "problem": self.problem, "session_id": self.session_id}


# Columns of a round that are set only by some rounds: absent from the event when unset.
_OPTIONAL_ROUND = ("step_text", "navigator_output", "retrieved", "instantiation", "evaluation")


@dataclass(frozen=True)
class RoundFinished:
    """A finished round: the solve_round row as written, and the event as emitted."""

    event: ClassVar[str] = "round"
    session_id: int
    round_no: int
    kind: str  # plan | step | final
    tokens: dict[str, Any]
    latency_ms: float
    adjustment: dict[str, Any] = field(default_factory=dict)
    step_text: str | None = None
    navigator_output: str | None = None
    retrieved: list[dict[str, Any]] | None = None
    instantiation: str | None = None
    evaluation: str | None = None
    navigator_prompt: list[dict[str, Any]] | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        """The solve_round row (without its session key), as serve.traces.store.write_round takes it."""
        out = {
            "round_no": self.round_no,
            "kind": self.kind,
            "tokens": self.tokens,
            "latency_ms": self.latency_ms,
        }
        for name in (*_OPTIONAL_ROUND, "navigator_prompt"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        out["adjustment"] = self.adjustment
        return out

    def to_dict(self) -> dict[str, Any]:
        """The event: the row less the navigator prompt (large, and already in the trace)."""
        out = {"event": self.event, **self.row(), "session_id": self.session_id}
        out.pop("navigator_prompt", None)
        return out

    @property
    def accepted_result(self) -> str | None:
        """The result of a step the navigator accepted (final from then on), else None."""
        if self.kind == "step" and self.adjustment.get("outcome") == "accepted":
            return (self.instantiation or "").strip() or None
        return None

    @property
    def ends_session(self) -> bool:
        """A final round, or a round that ended the session with an error: the `done` event follows."""
        return self.kind == "final" or bool(self.adjustment.get("error"))


@dataclass(frozen=True)
class SessionDone:
    event: ClassVar[str] = "done"
    result: SolveResult

    @property
    def session_id(self) -> int:
        return self.result.session_id

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, **self.result.to_dict()}


@dataclass(frozen=True)
class SessionError:
    event: ClassVar[str] = "error"
    message: str
    session_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "message": self.message}


SolveEvent = SessionStarted | RoundFinished | SessionDone | SessionError


def event_from_dict(d: dict[str, Any]) -> SolveEvent:
    """An event from its to_dict() form (what /v1/solve streams)."""
    kind = d.get("event")
    if kind == "done":
        return SessionDone(SolveResult.from_dict(d))
    if kind == "error":
        return SessionError(d["message"], d.get("session_id"))
    cls = {"session": SessionStarted, "round": RoundFinished}.get(kind)
    if cls is None:
        raise ValueError(f"not a solve event: event {kind!r}")
    return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
