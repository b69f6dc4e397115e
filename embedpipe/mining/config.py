"""Recipe section for hard-negative mining (NV-Retriever's TopK-PercPos by default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from embedpipe.config_base import Section


class TeacherConfig(Section):
    model: str  # sentence-transformers folder/name, an embedpipe encoder export, or "all-minilm-l6-v2"
    query_prompt: str | None = None
    document_prompt: str | None = None
    weight: float = Field(1.0, gt=0)


class MiningConfig(Section):
    teachers: list[TeacherConfig] = Field(default_factory=lambda: [TeacherConfig(model="all-minilm-l6-v2")])
    combine: Literal["mean", "max"] = "mean"
    margin_type: Literal["perc", "abs"] = "perc"
    margin: float = Field(0.95, gt=0)
    top_k: int = Field(4, gt=0)
    sample_from: tuple[int, int] | None = None  # sample from this rank range instead of plain top-k
    candidates: int = Field(100, gt=0)
    chunk_size: int = Field(16384, gt=0)
    batch_size: int = Field(64, gt=0)
    index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    ann_threshold: int = Field(2_000_000, gt=0)
    skip_missing_positive: bool = True
    seed: int = 42
