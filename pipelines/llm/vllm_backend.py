"""In-process vLLM (`vllm.LLM`), imported only when this backend is chosen (optional extra `vllm`).

One `LLM.chat` call takes the whole batch with per-request sampling parameters (per-request seeds are
honoured), so vLLM's continuous batching does the scheduling. With `structured_output` (any true value:
in-process there is no dialect to choose), a request's JSON schema, in its decoding form
(`pipelines.llm.structured.decoding_schema`), constrains decoding: `StructuredOutputsParams(json=...)` on
vLLM >= 0.12, `GuidedDecodingParams(json=...)` before.
"""

from __future__ import annotations

import os
import time
from typing import Any

from kb.errors import KbError
from pipelines.llm.base import SAMPLING_EXTRAS, ChatRequest, Completion, check_model_dir
from pipelines.llm.registry import register_backend
from pipelines.llm.structured import decoding_schema, structured_mode


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise KbError(
            "the vllm backend needs the optional extra: pip install 'reasonflux-kb[vllm]' "
            f"(import failed: {e}); or serve the model with `vllm serve` and use the openai backend"
        ) from None
    return vllm


class VllmBackend:
    name = "vllm"
    sampling_extras = SAMPLING_EXTRAS

    def __init__(
        self,
        model_path: str,
        *,
        model: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        structured_output: bool | str = False,
        **engine_options: Any,
    ):
        self.structured = structured_mode(structured_output, where="vllm backend: structured_output")
        vllm = _import_vllm()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = check_model_dir(model_path)
        self.model = model or str(path)
        self._vllm = vllm
        kwargs = dict(
            model=str(path),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            **engine_options,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(**kwargs)

    def _constrained(self, req: ChatRequest) -> bool:
        return self.structured is not None and req.response_schema is not None

    def _sampling(self, req: ChatRequest):
        p = req.params
        extra = _constraint(decoding_schema(req.response_schema)) if self._constrained(req) else {}
        return self._vllm.SamplingParams(
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            seed=p.seed,
            stop=list(p.stop) or None,
            **p.extras(),
            **extra,
        )

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        t0 = time.perf_counter()
        try:
            outputs = self.llm.chat(
                [r.messages for r in requests], [self._sampling(r) for r in requests], use_tqdm=False
            )
        except Exception as e:  # noqa: BLE001 - a failed batch is recorded, never fatal
            return [Completion(text="", error=f"{type(e).__name__}: {e}") for _ in requests]
        latency = (time.perf_counter() - t0) * 1000
        return [
            Completion(
                text=o.outputs[0].text,
                prompt_tokens=len(o.prompt_token_ids or []),
                completion_tokens=len(o.outputs[0].token_ids),
                latency_ms=latency,
                structured="vllm" if self._constrained(r) else None,
            )
            for r, o in zip(requests, outputs)
        ]


def _constraint(schema: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams keyword for JSON-schema-constrained decoding, for the vLLM version installed."""
    import vllm.sampling_params as sp

    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(json=schema)}
    return {"guided_decoding": sp.GuidedDecodingParams(json=schema)}


@register_backend("vllm", options=VllmBackend)
def _factory(**options: Any) -> VllmBackend:
    return VllmBackend(**options)
