"""A tiny, randomly initialised Qwen2-style chat model built offline, for tests and demos.

The tokenizer is trained on the spot (byte-level BPE over a small built-in corpus) so that nothing is
downloaded; the model weights come from a seeded random initialisation. Its output is garbage by design:
it exercises the real code paths (chat template, batching, token counts), not reasoning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipelines.llm.base import check_model_dir  # noqa: F401  (re-exported: callers check built models)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Let x be a real number such that x^2 - 5x + 6 = 0. Find all possible values of x.",
    "The answer is \\boxed{3}. Therefore the final answer is 3.",
    "We compute \\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}, so the sum is \\boxed{\\frac{5}{6}}.",
    "Step 1: Identify the sequence. Step 2: Apply the formula for the sum of an arithmetic series.",
    "The interval is [2, 5) and the set is \\{1, 2, 3\\}. The radius is 2\\sqrt{2} cm.",
    '{"name": "Telescoping sum", "type": "technique", "tags": ["sequences"], "steps": ["a", "b"]}',
    '{"abstraction": "quadratic equation", "steps": [{"template": "Vieta", "action": "use"}]}',
    "Consider the triangle ABC with angles 30^\\circ, 60^\\circ and 90^\\circ.",
    "Complex numbers z = a + bi satisfy |z|^2 = a^2 + b^2. Counting principles: n choose k.",
    "Solve for the unknown, check the boundary cases, then simplify the expression completely.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } < > ^ _ , . : ; ! ? $ \\",
]


def _train_tokenizer(vocab_size: int, corpus: Sequence[str] | None = None):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
    )
    tok.train_from_iterator(list(corpus or _CORPUS) * 4, trainer=trainer)
    return tok


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 2048,
    corpus: Sequence[str] | None = None,
) -> Path:
    """Write a loadable tiny chat model (config, weights, tokenizer) to out_dir and return its path.

    CORPUS: texts to fit the tokenizer to instead of the built-in ones (a world whose texts tokenise into
    few tokens trains and samples faster)."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = _train_tokenizer(vocab_size, corpus)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = max_positions

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "reasonflux_tiny_model.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "vocab_size": vocab_size,
                "hidden_size": hidden_size,
                "layers": layers,
            },
            indent=2,
        )
        + "\n"
    )
    return out
