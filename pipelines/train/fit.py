"""Training a navigator on TRL: stage 1 on SFTTrainer (template-knowledge conversations and plan examples in),
stage 2 on DPOTrainer (trajectory preference pairs in, trained against a frozen copy of the base model as the
reference). Both load, check, train, save and summarise the same way; what differs between them is their
config (`sft_config.py`, `dpo_config.py`). DPO's per-step metrics include rewards/chosen, rewards/rejected,
rewards/margins and rewards/accuracies (the share of pairs whose chosen answer gets the higher implicit reward).
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kb.errors import KbError

TRAINERS = {"sft": "SFTTrainer", "dpo": "DPOTrainer"}  # stage -> TRL trainer class


def trainer_class(stage: str):
    """The TRL trainer class that trains STAGE (imported now: trl is heavy)."""
    import trl

    return getattr(trl, TRAINERS[stage])


def fit(
    trainer_cls,
    config,
    *,
    base_model: str,
    train_dataset,
    output_dir: str,
    callbacks: Sequence[Any] = (),
    resume_from_checkpoint: str | None = None,
    deepspeed: str | None = None,
    use_cpu: bool = False,
) -> dict[str, Any]:
    """Train TRAINER_CLS (SFTTrainer or DPOTrainer) per CONFIG, save model + tokenizer, return the summary."""
    from transformers import AutoTokenizer

    check_trainable_model(base_model)
    args = config.trl_config(**runtime_args(output_dir, deepspeed=deepspeed, use_cpu=use_cpu))
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    trainer = trainer_cls(
        model=base_model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=config.peft_config(),
    )
    check_not_emptied(trainer, len(train_dataset), config.max_length)
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    save_model(trainer, output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
    return summarize(trainer, result)


def save_model(trainer, output_dir: str) -> None:
    """The trained model as a plain model folder. LoRA adapters are merged into the base weights first, so
    a LoRA navigator loads, serves, trains again and converts to GGUF exactly like a full fine-tune."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "merge_and_unload"):
        trainer.save_model(output_dir)
        return
    merged = model.merge_and_unload()
    if trainer.is_world_process_zero():
        merged.save_pretrained(output_dir)


def summarize(trainer, result) -> dict[str, Any]:
    """The trainer's summary plus throughput (non-padding tokens per second, all processes) and peak memory
    (this process: GPU allocations on a GPU, resident set size on CPU)."""
    import torch

    out = {**result.metrics, "global_step": result.global_step}
    tokens = next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None)
    runtime = result.metrics.get("train_runtime")
    if tokens and runtime:
        out["train_tokens_per_second"] = tokens / runtime
    if torch.cuda.is_available():
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return out


def check_not_emptied(trainer, rows: int, max_length: int) -> None:
    """TRL drops examples whose answer would be cut off entirely; none left is a config error, not a crash."""
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise KbError(
            f"all {rows} examples were dropped in preprocessing: their prompts do not leave room for "
            f"the answer within max_length {max_length}; raise --cutoff"
        )


def check_trainable_model(model_dir: str) -> None:
    """Weights and a tokenizer must be there (a dry run needs only config.json; training needs all)."""
    path = Path(model_dir)
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise KbError(
            f"{path}: no model weights (*.safetensors or *.bin); training needs a complete model directory"
        )
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise KbError(f"{path}: no tokenizer (tokenizer.json / tokenizer_config.json)")


def runtime_args(output_dir: str, *, deepspeed: str | None, use_cpu: bool) -> dict[str, Any]:
    """TrainingArguments that depend on where the run happens, not on the experiment."""
    return {
        "output_dir": output_dir,
        "use_cpu": use_cpu,
        "deepspeed": deepspeed,
        "report_to": "none",
        "save_strategy": "steps",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        # The model is saved at the end with save_model; checkpoints exist to resume, so they keep
        # the optimizer state.
        "save_only_model": False,
    }
