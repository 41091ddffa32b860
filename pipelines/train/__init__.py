"""Navigator training: stage-1 SFT and stage-2 DPO on TRL, launched with accelerate + DeepSpeed, recorded in
the KB (training_run, training_metric, navigator_model).

    plan(db, "sft", dataset=..., base_model=..., overrides={...})  -> LaunchPlan (validated; a dry run stops)
    execute(db, plan)                                             -> the finished training_run, navigator named
    resolve_navigator(session, name_or_path)                      -> folder of a navigator or model name
                                                                    (pipelines.models.names.resolve)
"""

from pipelines.train.dpo_config import DPOTrainConfig
from pipelines.train.launch import LaunchPlan, plan
from pipelines.train.memory import estimate_memory, resolve_deepspeed
from pipelines.train.navigators import list_navigators, resolve_navigator
from pipelines.train.run import execute
from pipelines.train.sft_config import SFTTrainConfig
from pipelines.train.training_runs import get_run, list_runs

__all__ = [
    "DPOTrainConfig",
    "LaunchPlan",
    "SFTTrainConfig",
    "estimate_memory",
    "execute",
    "get_run",
    "list_navigators",
    "list_runs",
    "plan",
    "resolve_deepspeed",
    "resolve_navigator",
]
