"""What each pipeline step returns: one pydantic model per step, passed between components as JSON.

Each model names the fields that other steps, the live view of ``embedpipe run`` and the tracking step read; the
area's other figures (mix counts, loss history, per-task scores...) ride along as extra fields, unchanged, so the JSON
a component returns keeps the keys it had. ``figure()`` is the step's key figure in one short phrase (records,
negatives, loss, score). ``for_component`` maps a KFP component name to its model, for reading a task's output.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class SummaryError(ValueError):
    """A step's summary lacks a field its model requires (or has one of the wrong type)."""


class StepSummary(BaseModel):
    # extra: the area's own figures pass through unchanged; NaN stays NaN on the wire (json.dumps did the same)
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")

    step_seconds: float | None = None  # the step's own compute (steps.timed), without process start

    def figure(self) -> str:
        return ""

    def to_json(self) -> str:
        return self.model_dump_json(fallback=str)  # as json.dumps(default=str) did

    def get(self, key: str, default: Any = None) -> Any:
        """A field or extra figure by name (``default`` when absent)."""
        try:
            return self[key]
        except KeyError:
            return default

    def __getitem__(self, key: str) -> Any:
        """``summary["final_loss"]``: a field or one of the area's extra figures."""
        if key in type(self).model_fields:
            return getattr(self, key)
        extra = self.__pydantic_extra__ or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    @classmethod
    def of(cls, summary: dict | StepSummary, step: str = ""):
        """``summary`` as this model; a SummaryError naming the step and field otherwise."""
        if isinstance(summary, cls):
            return summary
        data = summary.model_dump() if isinstance(summary, BaseModel) else summary
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SummaryError(f"{step or cls.__name__} summary: {where}: {first['msg']}") from None


class DownloadSummary(StepSummary):
    planned: int
    entries: list[Any] = []
    missing: list[Any] = []
    offline: bool = False

    def figure(self) -> str:
        return f"{self.planned} hub entries" + (" (offline cache)" if self.offline else "")


class BaseEncoderSummary(StepSummary):
    base: str  # the recipe's model.base ("random init" for a random-initialised one)
    out_dir: str = ""

    def figure(self) -> str:
        return f"from {self.base}"


class DataSummary(StepSummary):
    records: int
    corpus_documents: int = 0
    eval_tasks: list[str] = []

    def figure(self) -> str:
        return f"{self.records} records, {self.corpus_documents} documents"


class SdgSummary(StepSummary):
    records: int = 0
    skipped: str | None = None

    def figure(self) -> str:
        return f"skipped ({self.skipped})" if self.skipped else f"{self.records} synthetic records"


class EmbedCorpusSummary(StepSummary):
    shard: int
    shards: int
    corpus_documents: int

    def figure(self) -> str:
        return f"shard {self.shard + 1}/{self.shards}, {self.corpus_documents} documents"


class MiningStats(BaseModel):
    model_config = ConfigDict(extra="allow")

    records_in: int
    records_out: int
    no_negatives: int = 0
    negatives_per_record: dict[str, int] = {}

    @property
    def negatives(self) -> int:
        return sum(int(k) * n for k, n in self.negatives_per_record.items())


class MineSummary(StepSummary):
    combine: dict[str, Any]
    mining: MiningStats

    def figure(self) -> str:
        return f"{self.mining.records_out} records, {self.mining.negatives} negatives"


class TrainSummary(StepSummary):
    stage: str
    steps: int
    records: int = 0
    first_loss: float | None = None
    final_loss: float | None = None
    history: list[dict[str, Any]] = []
    variant: dict[str, Any] | None = None  # stage 2: the variant it trained

    def figure(self) -> str:
        name = f"{self.variant['name']}: " if self.variant and self.variant.get("name") else ""
        loss = "no steps" if self.final_loss is None else f"loss {self.final_loss:.4g}"
        return f"{name}{loss} ({self.steps} steps)"


class MergeSummary(StepSummary):
    method: str
    out_dir: str = ""
    inputs: list[Any] = []
    ingredients: list[Any] | None = None  # greedy soup: the checkpoints it kept
    score: float | None = None  # greedy soup: the soup's score

    def figure(self) -> str:
        kept = len(self.ingredients) if self.ingredients is not None else len(self.inputs)
        score = f", score {self.score:.4f}" if self.score is not None else ""
        return f"{self.method}, {kept} checkpoints{score}"


def _score(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


class EvalSummary(StepSummary):
    model_name: str = ""
    scores: dict[str, float] = {}
    mean_task: float | None = None
    mean_task_type: float | None = None
    borda_rank: int | None = None

    def figure(self) -> str:
        n = len(self.scores)
        return f"Mean(Task) {_score(self.mean_task)} on {n} task{'s' if n != 1 else ''}"


class TrackSummary(StepSummary):
    mlflow_run_id: str
    experiment: str
    model_uri: str | None = None
    scores_uri: str | None = None
    scores: dict[str, float] = {}
    manifest: str | None = None
    children: list[dict[str, Any]] = []  # ablation: the cells' child runs

    def figure(self) -> str:
        return f"MLflow run {self.mlflow_run_id[:8]}"


class CloseSummary(StepSummary):
    """The exit handler's step: the parent run's status once the pipeline's steps ended (however they ended)."""
    parent_run_id: str | None = None
    pipeline_state: str
    status: str | None = None

    def figure(self) -> str:
        if self.parent_run_id is None:
            return "no parent run was opened"
        return f"parent run {self.status} (steps {self.pipeline_state.lower()})"


class CellSummary(StepSummary):
    """An ablation cell's stage-2 merge set: its runs and the merge."""
    name: str

    def figure(self) -> str:
        return f"cell {self.name}"


# KFP component name (the function name, dashes) -> its summary model
COMPONENTS: dict[str, type[StepSummary]] = {
    "download-models": DownloadSummary,
    "build-data": DataSummary,
    "base-encoder": BaseEncoderSummary,
    "synthesize": SdgSummary,
    "synthesize-generator": SdgSummary,
    "embed-corpus": EmbedCorpusSummary,
    "mine": MineSummary,
    "train-stage1": TrainSummary,
    "train-stage2": TrainSummary,
    "train-stage1-job": TrainSummary,
    "train-stage2-job": TrainSummary,
    "train-merge-set": CellSummary,
    "merge": MergeSummary,
    "evaluate": EvalSummary,
    "evaluate-group": EvalSummary,
    "merge-evaluations": EvalSummary,
    "track-full": TrackSummary,
    "track-ablation": TrackSummary,
    "track-close": CloseSummary,
}


def for_component(component: str) -> type[StepSummary] | None:
    """The summary model of a KFP component (``comp-train-stage1`` or ``train-stage1``; ``comp-evaluate-2``, KFP's
    name for the second use of ``evaluate`` in a pipeline, is ``evaluate``); None for one that returns no summary
    (the plan steps return lists)."""
    name = component.removeprefix("comp-")
    return COMPONENTS.get(name) or COMPONENTS.get(re.sub(r"-\d+$", "", name))


def read_output(component: str, output: str | None) -> StepSummary | None:
    """A task's JSON output as its component's summary; None when it has no model or the output is no summary
    object (a plan's list)."""
    model = for_component(component)
    if model is None or not output:
        return None
    data = json.loads(output) if isinstance(output, str) else output
    return model.of(data, component) if isinstance(data, dict) else None
