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
    """The ablation grid: every combination of loss variant x SDG generator mix x merge set x seed is one child run.

    Empty axes keep the recipe's own setting (its loss, its generator shares, all stage-2 variants merged, its seed).
    Cells share every step whose effective inputs they share (embedpipe.orchestration.ablation.plan_grid): a
    loss-only axis shares SDG and mining, a merge-set-only axis shares stage 1 and the stage-2 trainings.
    """

    losses: list[LossName] = Field(default_factory=list)
    generator_mixes: list[GeneratorMix] = Field(default_factory=list)
    merge_sets: list[list[str]] = Field(default_factory=list)  # each: names of training.stage2_variants to merge
    seeds: list[int] = Field(default_factory=list)  # the recipe's root seed per cell (SDG, mining, training)
    parallelism: int = Field(1, ge=1)  # training steps (stage 1 or stage 2) that run at once

    @model_validator(mode="after")
    def _distinct_axis_values(self) -> "AblationConfig":
        for axis, values in (("losses", self.losses), ("seeds", self.seeds),
                             ("generator_mixes", [m.name for m in self.generator_mixes]),
                             ("merge_sets", ["+".join(m) for m in self.merge_sets])):
            doubled = sorted({str(v) for v in values if values.count(v) > 1})
            if doubled:
                raise ValueError(f"pipeline.ablation.{axis}: {doubled} appear more than once")
        empty = [i for i, m in enumerate(self.merge_sets) if not m]
        if empty:
            raise ValueError(f"pipeline.ablation.merge_sets[{empty[0]}] is empty: name at least one stage-2 variant")
        return self


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
