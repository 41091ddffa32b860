"""The backend interface: chat messages in, text out, batched, with token counts."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from kb.errors import KbError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
# vLLM's sampling parameters beyond OpenAI's; a backend lists those it applies in `sampling_extras`
SAMPLING_EXTRAS = ("top_k", "min_p", "repetition_penalty")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def extras(self) -> dict[str, Any]:
        """The SAMPLING_EXTRAS that are set."""
        return {k: getattr(self, k) for k in SAMPLING_EXTRAS if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        # extras only when set: what calls without them record stays as it was
        d = {k: v for k, v in asdict(self).items() if k not in SAMPLING_EXTRAS}
        d["stop"] = list(self.stop)
        return {**d, **self.extras()}


@dataclass
class ChatRequest:
    messages: list[Message]
    params: SamplingParams = field(default_factory=SamplingParams)
    # Free-form labels (stage, unit key, role) carried into the call log.
    tags: dict[str, Any] = field(default_factory=dict)
    # The JSON schema the reply must follow (the navigator contract's, the miner's), enforced at decode time
    # in its decoding form (`pipelines.llm.structured.decoding_schema`) by the backends configured to
    # (`structured_output`); every reply is parsed strictly against the full schema anyway.
    response_schema: dict[str, Any] | None = None


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    error: str | None = None  # set when the backend gave up on this request after retries
    # How the request's schema constrained decoding ("json_schema", "json_object", "xgrammar", "vllm"), or
    # None when it did not; recorded with the call.
    structured: str | None = None


@runtime_checkable
class Backend(Protocol):
    """Every backend: `name` (registry key), `model` (what is recorded), and batched `generate`.

    A backend that applies some of SAMPLING_EXTRAS says which in a `sampling_extras` attribute (absent:
    none); the others are never set on its requests."""

    name: str
    model: str

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """One completion per request, in order. Failures come back as Completion.error, not exceptions."""
        ...


def check_model_dir(path: str | os.PathLike) -> Path:
    """A local model directory, or a clear error: models are never downloaded at run time."""
    p = Path(path).expanduser()
    if not p.is_dir() or not (p / "config.json").is_file():
        raise KbError(
            f"model path {str(p)!r} is not a local model directory (no config.json); "
            "models are never downloaded: pass a directory, e.g. one built by `reasonflux dev tiny-model DIR`"
        )
    return p
