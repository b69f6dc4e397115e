"""Recipe section for MTEB evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from embedpipe.config_base import Section


class LocalTaskConfig(Section):
    """A task over local files, evaluated by mteb's own evaluators."""

    name: str
    type: str  # retrieval | sts | classification | pair_classification | clustering | reranking | bitext
    path: str  # folder (BEIR for retrieval) or file
    split: str = "test"
    # the split its files hold out for model selection (stage-2 variants, ablation cells, greedy soup): scored by
    # the dev evaluation, never by the test one; None: the task has no dev split
    dev_split: str | None = None
    instruction: str | None = None
    language: str = "en"


class EvaluationConfig(Section):
    """The test tasks (``benchmark``, ``tasks``, ``local_tasks``: the final model's scores) and the dev tasks
    (``dev_tasks``, ``dev_local_tasks``, local tasks' ``dev_split``: what model selection sees, held out from
    training and disjoint from the test tasks' test splits)."""

    benchmark: str | None = None  # e.g. "MTEB(Multilingual, v2)"; needs hub access
    tasks: list[str] = Field(default_factory=list)  # mteb task names; needs hub access
    local_tasks: list[LocalTaskConfig] = Field(default_factory=list)
    # mteb tasks scored on a dev split: "Name" (split "dev") or "Name:split" (e.g. "XNLI:validation"); needs hub access
    dev_tasks: list[str] = Field(default_factory=list)
    dev_local_tasks: list[LocalTaskConfig] = Field(default_factory=list)  # scored on their ``split``
    reference_results: str | None = None  # folder of mteb result files to rank against
    # task name or mteb task type ("Retrieval", "STS", ...) -> instruction, for tasks whose metadata has none
    instructions: dict[str, str] = Field(default_factory=dict)
    batch_size: int = Field(32, gt=0)
    groups: int = Field(1, ge=1)  # on a cluster: pods the tasks fan out over (merged into one results folder)
    max_corpus: int | None = Field(None, gt=0)  # local tasks: the judged documents plus others up to this many
    # the same for the dev tasks alone (model selection ranks models on the same smaller corpus; the test scores keep
    # the whole one); None: max_corpus
    dev_max_corpus: int | None = Field(None, gt=0)
    # the encoder's arithmetic on CPU: "auto" = retrieval corpora under bf16 autocast over the fp32 weights where the
    # CPU has native bf16 (AVX512-BF16 / AMX; about 1.6x fp32's throughput), queries and uni-encoder texts in fp32
    # (short texts are where bf16 moves a vector most), all fp32 elsewhere; "fp32" as the weights are (the default:
    # scores comparable with fp32 references). GPUs load bf16 weights either way.
    precision: Literal["auto", "fp32"] = "fp32"

    @field_validator("dev_tasks")
    @classmethod
    def _dev_task_names(cls, names: list[str]) -> list[str]:
        for name in names:
            task, _, split = name.partition(":")
            if not task.strip() or (":" in name and not split.strip()):
                raise ValueError(f"dev task {name!r}: give an mteb task name, optionally with ':split' "
                                 "(e.g. 'MIRACLRetrievalHardNegatives:dev')")
        return names


def dev_task_split(name: str) -> tuple[str, str]:
    """``"Name"`` -> (Name, "dev"); ``"Name:split"`` -> (Name, split)."""
    task, _, split = name.partition(":")
    return task.strip(), (split.strip() or "dev")
