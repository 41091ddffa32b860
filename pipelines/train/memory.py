"""Model size and DeepSpeed for a training plan: the shipped DeepSpeed configs by name, the model's parameter
counts from config.json alone, DeepSpeed's model-states memory estimate, and the GPUs this machine has.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from kb.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent
DEEPSPEED_DIR = PACKAGE_DIR / "deepspeed"
# Short names for the shipped DeepSpeed configs; any file stem in DEEPSPEED_DIR is accepted too.
DEEPSPEED_ALIASES = {"zero3": "zero3_a100x8_32b", "zero3-offload": "zero3_offload"}
DEFAULT_GPU_DEEPSPEED = "zero3"
# The paper's GPUs (A100-80GB) when planning on a machine without GPUs.
DEFAULT_GPU_MEMORY_GB = 80.0


# -- DeepSpeed configs by name ------------------------------------------------------------------------


def deepspeed_configs() -> dict[str, Path]:
    """Name -> shipped JSON file, aliases included."""
    files = {p.stem: p for p in sorted(DEEPSPEED_DIR.glob("*.json"))}
    return {
        **files,
        **{alias: files[target] for alias, target in DEEPSPEED_ALIASES.items() if target in files},
    }


def resolve_deepspeed(name_or_path: str) -> tuple[str, Path, dict[str, Any]]:
    """(name, path, parsed JSON) for a shipped config name or a JSON file path."""
    shipped = deepspeed_configs()
    if name_or_path in shipped:
        path, name = shipped[name_or_path], name_or_path
    elif name_or_path.endswith(".json") and Path(name_or_path).expanduser().is_file():
        path = Path(name_or_path).expanduser().resolve()
        name = path.stem
    else:
        raise InputError(
            f"unknown DeepSpeed config {name_or_path!r}; shipped: {', '.join(sorted(shipped))} "
            "(or pass a path to a .json file)",
            field="deepspeed",
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e}", file=str(path)) from None
    zero = data.get("zero_optimization")
    if not isinstance(zero, dict) or zero.get("stage") not in (0, 1, 2, 3):
        raise InputError(
            "needs zero_optimization.stage (0-3)", file=str(path), field="zero_optimization.stage"
        )
    return name, path, data


# -- model size and DeepSpeed's memory estimate ------------------------------------------------------


def count_parameters(model_dir: str) -> dict[str, int]:
    """Total and largest-layer parameter counts from config.json alone (built on the meta device).

    Only config.json is needed, so a dry run can plan a 32B run with a directory holding just that file.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot read the model config: {e}", file=str(Path(model_dir) / "config.json")
        ) from None
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    total = sum(
        {p.data_ptr() if p.device.type != "meta" else id(p): p.numel() for p in model.parameters()}.values()
    )
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    out = {"total": int(total), "largest_layer": int(largest)}
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int):
        out["max_positions"] = positions
    return out


def deepspeed_version() -> str | None:
    """The installed deepspeed's version if it imports, else None (it is the optional `train` extra)."""
    try:
        # deepspeed's logger writes to the stdout it finds at import; keep it off ours (--json output).
        with contextlib.redirect_stdout(sys.stderr):
            import deepspeed  # noqa: F401

        return version("deepspeed")
    except (ImportError, OSError, RuntimeError):  # absent, or present but broken for this torch/CUDA
        return None


def _zero3_states(
    total: int,
    largest: int,
    gpus: int,
    nodes: int,
    offload_opt: bool,
    offload_param: bool,
    zero_init: bool,
    buffer: float = 1.5,
) -> tuple[int, int]:
    """DeepSpeed's closed form for ZeRO-3 model states (bytes per CPU node, per GPU).

    Mixed-precision AdamW needs 18 bytes per parameter (2 fp16 weights + 2 fp16 grads + 4 fp32 grads +
    4 fp32 master weights + 8 fp32 moments), 16 of them offloadable; ZeRO-3 splits them over all GPUs and
    keeps the largest layer (4 bytes/param) gathered. CPU figures carry a 1.5x buffer factor.
    """
    gpus_factor = 1 / nodes
    largest_mem = 4 * largest
    per_node_gpus = gpus // nodes
    if offload_opt and offload_param:
        gpu = largest_mem
        cpu = total * (18 * gpus_factor if zero_init else max(4 * per_node_gpus, 18 * gpus_factor)) * buffer
    elif offload_opt:
        gpu = largest_mem + int(2 * total / gpus)
        cpu = total * (16 * gpus_factor if zero_init else max(4 * per_node_gpus, 16 * gpus_factor)) * buffer
    else:
        gpu = largest_mem + int(18 * total / gpus)
        cpu = (largest if zero_init else total) * 4 * per_node_gpus * buffer
    return int(cpu), int(gpu)


def _zero2_states(
    total: int, gpus: int, nodes: int, offload_opt: bool, buffer: float = 1.5
) -> tuple[int, int]:
    """DeepSpeed's closed form for ZeRO-2: fp16 weights stay whole on every GPU (2 bytes/param); the other
    16 bytes/param are split over the GPUs, or kept on the CPU when the optimizer is offloaded."""
    per_node_gpus = gpus // nodes
    if offload_opt:
        return int(total * max(4 * gpus, 16) * buffer), 2 * total
    return int(total * 4 * per_node_gpus * buffer), 2 * total + int(18 * total / gpus)


def estimate_memory(
    params: dict[str, int], ds_config: dict[str, Any], num_gpus: int, num_nodes: int = 1
) -> dict[str, Any]:
    """DeepSpeed's model-states estimate for this config on these GPUs (GiB), and its full option table.

    Uses deepspeed's own estimators when deepspeed is installed, else the same closed forms above.
    """
    zero = ds_config.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    offload_opt = (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
    offload_param = (zero.get("offload_param") or {}).get("device", "none") not in ("none", None)
    total, largest = params["total"], params["largest_layer"]
    ds_version = deepspeed_version()
    table = None
    if stage == 3:
        if ds_version:
            from deepspeed.runtime.zero.stage3 import (
                estimate_zero3_model_states_mem_needs,
                estimate_zero3_model_states_mem_needs_all_cold,
            )

            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                total,
                largest,
                num_gpus_per_node=num_gpus // num_nodes,
                num_nodes=num_nodes,
                cpu_offload=offload_opt,
                cpu_offload_params=offload_param,
                zero_init=True,
            )
            table = _captured(
                estimate_zero3_model_states_mem_needs_all_cold,
                total_params=total,
                largest_layer_params=largest,
                num_gpus_per_node=num_gpus // num_nodes,
                num_nodes=num_nodes,
            )
        else:
            cpu, gpu = _zero3_states(total, largest, num_gpus, num_nodes, offload_opt, offload_param, True)
    elif stage == 2:
        if ds_version:
            from deepspeed.runtime.zero.stage_1_and_2 import (
                estimate_zero2_model_states_mem_needs,
                estimate_zero2_model_states_mem_needs_all_cold,
            )

            cpu, gpu = estimate_zero2_model_states_mem_needs(
                total, num_gpus_per_node=num_gpus // num_nodes, num_nodes=num_nodes, cpu_offload=offload_opt
            )
            table = _captured(
                estimate_zero2_model_states_mem_needs_all_cold,
                total_params=total,
                num_gpus_per_node=num_gpus // num_nodes,
                num_nodes=num_nodes,
            )
        else:
            cpu, gpu = _zero2_states(total, num_gpus, num_nodes, offload_opt)
    else:  # stages 0/1: plain data parallel, every GPU holds all 18 bytes/param (stage 1 splits 12 of them)
        gpu = total * (18 if stage == 0 else 6 + int(12 / num_gpus))
        cpu = 0
    gib = 2**30
    return {
        "zero_stage": stage,
        "offload_optimizer": offload_opt,
        "offload_param": offload_param,
        "num_gpus": num_gpus,
        "num_nodes": num_nodes,
        "total_params": total,
        "largest_layer_params": largest,
        "per_gpu_gib": round(gpu / gib, 2),
        "per_node_cpu_gib": round(cpu / gib, 2),
        "source": f"deepspeed {ds_version}" if ds_version else "built-in copy of DeepSpeed's formula",
        "deepspeed_table": table,
    }


def _captured(fn, **kwargs) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(**kwargs)
    return buf.getvalue().rstrip()


def available_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def detected_gpu_memory_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return (
        min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        / 2**30
    )
