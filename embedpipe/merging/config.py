"""Recipe section for checkpoint merging."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from embedpipe.config_base import Section


class MergeConfig(Section):
    method: Literal["uniform", "weighted", "greedy_soup"] = "uniform"
    weights: list[float] | None = None
    shard_size: str = "5GB"

    @model_validator(mode="after")
    def _weights_fit_the_method(self) -> "MergeConfig":
        if self.method == "weighted" and not self.weights:
            raise ValueError("merge.method weighted needs merge.weights (one per stage-2 variant)")
        if self.weights is not None:
            if any(w < 0 for w in self.weights):
                raise ValueError(f"merge.weights: {self.weights} has a negative weight; weights are >= 0")
            if sum(self.weights) <= 0:
                raise ValueError("merge.weights: the weights sum to 0; at least one needs to be positive")
        return self
