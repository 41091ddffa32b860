"""The plain API's request and response bodies (the OpenAI ones are serve.http.openai_request and
openai_response).

The solve response is not a second result type: it is serve.solve_events.SolveResult's public fields, with
their types, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from serve.solve_events import PUBLIC_FIELDS, SolveResult


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    problem: str = Field(min_length=1, description="The problem statement.")
    reference: str | None = Field(
        None, description="A known answer: the session records whether it was right."
    )
    problem_id: int | None = Field(None, description="The KB problem this is, if any.")
    max_rounds: int | None = Field(None, ge=1, description="At most the server's round limit.")
    max_tokens: int | None = Field(None, ge=1, description="At most the server's token limit.")
    stream: bool = Field(False, description="Stream server-sent events: session, one per round, done.")


def _public_model(name: str, doc: str) -> type[BaseModel]:
    hints = get_type_hints(SolveResult)
    hints["total_tokens"] = get_type_hints(SolveResult.total_tokens.fget)["return"]
    return create_model(name, __doc__=doc, **{f: (hints[f], ...) for f in PUBLIC_FIELDS})


SolveResponse = _public_model("SolveResponse", "A finished session: SolveResult's public fields.")


def solve_response(result: SolveResult) -> dict[str, Any]:
    """The /v1/solve body of RESULT (its public fields, as SolveResponse documents them)."""
    return result.public()


def model_card(model_name: str) -> dict[str, Any]:
    """The one model this server serves, as /v1/models lists it."""
    return {
        "id": model_name,
        "object": "model",
        "created": 0,
        "owned_by": "reasonflux",
        "root": model_name,
        "parent": None,
    }
