"""Recipe section for MTEB evaluation."""

from __future__ import annotations

from pydantic import Field

from embedpipe.config_base import Section


class LocalTaskConfig(Section):
    """A task over local files, evaluated by mteb's own evaluators."""

    name: str
    type: str  # retrieval | sts | classification | pair_classification | clustering | reranking | bitext
    path: str  # folder (BEIR for retrieval) or file
    split: str = "test"
    instruction: str | None = None
    language: str = "en"


class EvaluationConfig(Section):
    benchmark: str | None = None  # e.g. "MTEB(Multilingual, v2)"; needs hub access
    tasks: list[str] = Field(default_factory=list)  # mteb task names; needs hub access
    local_tasks: list[LocalTaskConfig] = Field(default_factory=list)
    reference_results: str | None = None  # folder of mteb result files to rank against
    # task name or mteb task type ("Retrieval", "STS", ...) -> instruction, for tasks whose metadata has none
    instructions: dict[str, str] = Field(default_factory=dict)
    batch_size: int = Field(32, gt=0)
    groups: int = Field(1, ge=1)  # on a cluster: pods the tasks fan out over (merged into one results folder)
    max_corpus: int | None = Field(None, gt=0)
