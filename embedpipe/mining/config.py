"""Recipe section for hard-negative mining (NV-Retriever's TopK-PercPos by default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from embedpipe.config_base import Section


class TeacherConfig(Section):
    """One teacher. ``query_prompt`` may contain ``{instruction}`` (replaced by each record's instruction); without
    prompts a sentence-transformers teacher uses its own ``query``/``document`` prompts, an embedpipe encoder export
    its ``Instruct: ...\\nQuery: ...`` template with the record's instruction."""

    model: str  # sentence-transformers folder/name, an embedpipe encoder export, or "all-minilm-l6-v2"
    query_prompt: str | None = None
    document_prompt: str | None = None
    weight: float = Field(1.0, gt=0)
    max_length: int | None = Field(None, gt=0)  # token limit for this teacher (default: the model's own)
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU


class MiningConfig(Section):
    teachers: list[TeacherConfig] = Field(default_factory=lambda: [TeacherConfig(model="all-minilm-l6-v2")])
    # Several teachers: each retrieves `candidates`, the union is scored by every teacher and the scores combined
    # ("mean": weight-averaged; "max": the highest, the most conservative about false negatives).
    combine: Literal["mean", "max"] = "mean"
    # perc: keep a candidate only if score < pos - |pos| * (1 - margin)  (= margin * pos for pos >= 0; TopK-PercPos)
    # abs:  keep a candidate only if score < pos - margin
    margin_type: Literal["perc", "abs"] = "perc"
    margin: float = Field(0.95, gt=0)
    top_k: int = Field(4, gt=0)
    sample_from: tuple[int, int] | None = None  # sample top_k from this rank range [lo, hi) of the kept candidates
    candidates: int = Field(100, gt=0)  # nearest neighbours retrieved per query and teacher
    # GPU tasks the corpus embedding fans out over on a cluster (each embeds every n-th chunk into the shared cache)
    embed_tasks: int = Field(1, ge=1)
    chunk_size: int = Field(16384, gt=0)  # corpus documents per embedding chunk (the unit of caching and of memory)
    query_block_size: int = Field(16384, gt=0)  # records embedded and searched together
    batch_size: int = Field(64, gt=0)
    cache_dtype: Literal["fp16", "fp32"] = "fp16"  # storage of cached corpus embeddings
    index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"  # auto: exact below ann_threshold documents, IVF above
    ann_threshold: int = Field(2_000_000, gt=0)
    ivf_nlist: int | None = Field(None, gt=0)  # default: 4 * sqrt(corpus size)
    ivf_nprobe: int = Field(64, gt=0)
    hnsw_m: int = Field(32, gt=0)
    hnsw_ef_search: int = Field(256, gt=0)
    use_gpu: Literal["auto", "never"] = "auto"  # GPU FAISS (and GPU teachers) when present
    # A record whose positive is not in the corpus (by id, or by text when it has no ids): true = count and drop it;
    # false = embed the positive text with each teacher and mine for it anyway.
    skip_missing_positive: bool = True
    seed: int = 42  # in a recipe: derived from the root seed (embedpipe.recipe.derive_seed)

    @model_validator(mode="after")
    def _check(self) -> "MiningConfig":
        if self.margin_type == "perc" and self.margin > 1:
            raise ValueError(f"margin: a perc margin is a fraction of the positive score (0 < margin <= 1), got {self.margin}")
        if self.sample_from is not None:
            lo, hi = self.sample_from
            if lo < 0 or hi - lo < self.top_k:
                raise ValueError(f"sample_from: the rank range {self.sample_from} must hold at least top_k={self.top_k} ranks")
            if hi > self.candidates:
                raise ValueError(f"sample_from: the range ends at {hi}, beyond candidates={self.candidates}")
        if self.candidates < self.top_k:
            raise ValueError(f"candidates ({self.candidates}) must be at least top_k ({self.top_k})")
        return self
