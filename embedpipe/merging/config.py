"""Recipe section for checkpoint merging."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from embedpipe.config_base import Section


class MergeConfig(Section):
    method: Literal["uniform", "weighted", "greedy_soup"] = "uniform"
    weights: list[float] | None = None
    shard_size: str = "5GB"
