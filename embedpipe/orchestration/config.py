"""Recipe section for ablation grids (``pipeline.ablation``) and the cluster settings of the compiled pipelines."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from embedpipe.config_base import Section
from embedpipe.training.config import LossName


# Cluster defaults, in one place (the recipe's ``pipeline`` section, compiled pipelines and KServe manifests read
# these; image names come from embedpipe.orchestration.images)
GPU_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}  # the A100 node pool
GPU_ACCELERATOR = "nvidia.com/gpu"
GPU_TOLERATIONS = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)


class GeneratorMix(Section):
    """One SDG generator mix of the grid: a share per generator name (0 or absent leaves a generator out)."""

    name: str
    shares: dict[str, float] = Field(min_length=1)  # each >= 0 (checked below), at least one > 0

    @model_validator(mode="after")
    def _shares_pick_a_generator(self) -> "GeneratorMix":
        negative = sorted(k for k, v in self.shares.items() if v < 0)
        if negative:
            raise ValueError(f"generator mix {self.name!r}: shares of {negative} are negative")
        if not any(v > 0 for v in self.shares.values()):
            raise ValueError(f"generator mix {self.name!r}: give at least one generator a share > 0")
        return self


class AblationConfig(Section):
    """The ablation grid: every combination of loss variant x SDG generator mix x merge set is one child run.

    Empty axes keep the recipe's own setting (its loss, its generator shares, all stage-2 variants merged).
    """

    losses: list[LossName] = Field(default_factory=list)
    generator_mixes: list[GeneratorMix] = Field(default_factory=list)
    merge_sets: list[list[str]] = Field(default_factory=list)  # each: names of training.stage2_variants to merge


class Toleration(Section):
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"


class AblationCell(Section):
    """One cell of the grid: its recipe overrides (``section.key`` -> value), the variants it merges, its axes."""

    name: str
    overrides: dict[str, Any]
    merge_set: list[str] = Field(min_length=1)
    axes: dict[str, str]
