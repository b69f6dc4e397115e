"""Recipe section for ablation grids (``pipeline.ablation``) and the cluster settings of the compiled pipelines."""

from __future__ import annotations

from pydantic import Field

from embedpipe.config_base import Section


class GeneratorMix(Section):
    """One SDG generator mix of the grid: a share per generator name (0 or absent leaves a generator out)."""

    name: str
    shares: dict[str, float]


class AblationConfig(Section):
    """The ablation grid: every combination of loss variant x SDG generator mix x merge set is one child run.

    Empty axes keep the recipe's own setting (its loss, its generator shares, all stage-2 variants merged).
    """

    losses: list[str] = Field(default_factory=list)
    generator_mixes: list[GeneratorMix] = Field(default_factory=list)
    merge_sets: list[list[str]] = Field(default_factory=list)  # each: names of training.stage2_variants to merge


class Toleration(Section):
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"
