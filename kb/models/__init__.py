"""All tables, in one place. Alembic's autogenerate reads SQLModel.metadata from here."""

from sqlmodel import SQLModel

from kb.models.llm import Failure, LlmCall, WorkUnit
from kb.models.problems import Problem, ProblemEmbedding, SimilarBuild, SimilarSet, SimilarSetMember
from kb.models.registered import RegisteredModel
from kb.models.retrievers import RetrieverModel
from kb.models.runs import PipelineRun
from kb.models.sessions import SolveRound, SolveSession
from kb.models.templates import Template, TemplateEmbedding, TemplateVersion
from kb.models.training import TrainingMetric, TrainingRun
from kb.models.trajectories import (
    DatasetLocation,
    DatasetVersion,
    DpoPair,
    NavigatorModel,
    Rollout,
    Trajectory,
    TrajectoryStep,
)
from kb.models.usage import SolveStepTemplate

metadata = SQLModel.metadata

__all__ = [
    "DatasetLocation",
    "DatasetVersion",
    "DpoPair",
    "Failure",
    "LlmCall",
    "NavigatorModel",
    "PipelineRun",
    "Problem",
    "ProblemEmbedding",
    "RegisteredModel",
    "RetrieverModel",
    "Rollout",
    "SimilarBuild",
    "SimilarSet",
    "SimilarSetMember",
    "SolveRound",
    "SolveSession",
    "SolveStepTemplate",
    "Template",
    "TemplateEmbedding",
    "TemplateVersion",
    "TrainingMetric",
    "TrainingRun",
    "Trajectory",
    "TrajectoryStep",
    "WorkUnit",
    "metadata",
]
