"""Local Hugging Face model (CPU or GPU): batched `generate` with left padding and the chat template.

Requests are grouped by sampling parameters (one `generate` call cannot mix temperatures) and run in
batches. Seeds: one `generate` call draws from one generator, so a batch is seeded from the seeds of the
requests in it; the same requests in the same batches reproduce the same text.

With `structured_output` (any true value), a request's JSON schema constrains decoding with xgrammar: its
decoding form (`pipelines.llm.structured`) is compiled once per schema against the tokenizer, and one
`xgrammar.contrib.hf.LogitsProcessor` per batch keeps a grammar matcher per row, so constrained requests
are batched like any others (requests are grouped by schema too). xgrammar because it is the engine vLLM
uses by default (one grammar semantics in-process on CPU and on a vLLM server), it masks a whole batch per
step from a precompiled token bitmask, and it plugs into `generate` as a plain logits processor.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

from pipelines.llm.base import SAMPLING_EXTRAS, ChatRequest, Completion, SamplingParams, check_model_dir
from pipelines.llm.registry import register_backend
from pipelines.llm.structured import decoding_schema, structured_mode


class TransformersBackend:
    name = "transformers"
    sampling_extras = SAMPLING_EXTRAS

    def __init__(
        self,
        model_path: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 8,
        model: str | None = None,
        threads: int | None = None,
        structured_output: bool | str = False,
        **_: Any,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = check_model_dir(model_path)
        self.structured = structured_mode(structured_output, where="transformers backend: structured_output")
        self._grammars: Any = None  # the xgrammar compiler, made on the first constrained request
        if threads:  # CPU inference: intra-op threads (a small model on a busy machine wants 1)
            torch.set_num_threads(int(threads))
        self.model = model or str(path)
        self.batch_size = max(1, int(batch_size))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs: dict[str, Any] = {"local_files_only": True}
        if dtype:
            kwargs["dtype"] = getattr(torch, dtype)
        self.lm = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(self.device).eval()
        self._lock = threading.Lock()  # one model, one generate at a time
        # Chat models often end turns with several tokens (Qwen: <|im_end|> and <|endoftext|>).
        configured = self.lm.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        self._eos_ids = sorted({i for i in [*ids, self.tokenizer.eos_token_id] if i is not None})

    def _prompt(self, req: ChatRequest) -> str:
        return self.tokenizer.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)

    def _schema(self, req: ChatRequest) -> str | None:
        """The decoding schema (JSON text) that constrains REQ, or None."""
        if self.structured is None or req.response_schema is None:
            return None
        return json.dumps(decoding_schema(req.response_schema), sort_keys=True)

    def _grammar(self, schema: str):
        """SCHEMA compiled for this tokenizer (xgrammar caches compiled grammars by schema)."""
        import xgrammar as xgr

        if self._grammars is None:
            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.lm.config.vocab_size, stop_token_ids=self._eos_ids
            )
            self._grammars = xgr.GrammarCompiler(info)
        # No free whitespace: a small model can spend its whole token budget on it inside the grammar.
        return self._grammars.compile_json_schema(schema, any_whitespace=False)

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            p = req.params
            key = (p.temperature, p.top_p, p.max_tokens, p.stop, tuple(p.extras().items()), self._schema(req))
            groups.setdefault(key, []).append(i)
        for key, idxs in groups.items():
            for start in range(0, len(idxs), self.batch_size):
                batch = idxs[start : start + self.batch_size]
                try:
                    done = self._generate_batch([requests[i] for i in batch], key[-1])
                except Exception as e:  # noqa: BLE001 - a failed batch is recorded, never fatal
                    done = [Completion(text="", error=f"{type(e).__name__}: {e}") for _ in batch]
                for i, c in zip(batch, done):
                    out[i] = c
        return [c for c in out if c is not None]

    def _generate_batch(self, reqs: list[ChatRequest], schema: str | None = None) -> list[Completion]:
        import torch

        params: SamplingParams = reqs[0].params
        t0 = time.perf_counter()
        enc = self.tokenizer(
            [self._prompt(r) for r in reqs], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self._eos_ids,
        }
        if params.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            gen_kwargs.update({k: v for k, v in params.extras().items() if k in ("top_k", "min_p")})
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.repetition_penalty is not None:
            gen_kwargs["repetition_penalty"] = params.repetition_penalty
        if schema is not None:
            from transformers import LogitsProcessorList
            from xgrammar.contrib.hf import LogitsProcessor

            # One processor per generate call (it keeps one grammar matcher per row of the batch).
            gen_kwargs["logits_processor"] = LogitsProcessorList([LogitsProcessor(self._grammar(schema))])
        with self._lock, torch.no_grad():
            seeds = [r.params.seed for r in reqs]
            if any(s is not None for s in seeds):
                digest = hashlib.sha256(repr(seeds).encode()).digest()
                torch.manual_seed(int.from_bytes(digest[:8], "little") % (2**63))
            generated = self.lm.generate(**enc, **gen_kwargs)
        new = generated[:, enc["input_ids"].shape[1] :]
        latency = (time.perf_counter() - t0) * 1000
        results = []
        for row, mask in zip(new, enc["attention_mask"]):
            n = _completion_length(row.tolist(), self._eos_ids, self.tokenizer.pad_token_id)
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            results.append(
                Completion(
                    text=_cut_at_stop(text, params.stop),
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=n,
                    latency_ms=latency,
                    structured="xgrammar" if schema else None,
                )
            )
        return results


def _completion_length(ids: list[int], eos: list[int], pad: int | None) -> int:
    """Generated tokens up to and including the first eos (the rest is padding)."""
    for i, t in enumerate(ids):
        if t in eos:
            return i + 1
    while ids and pad is not None and ids[-1] == pad and pad not in eos:
        ids = ids[:-1]
    return len(ids)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


@register_backend("transformers", options=TransformersBackend)
def _factory(**options: Any) -> TransformersBackend:
    return TransformersBackend(**options)
