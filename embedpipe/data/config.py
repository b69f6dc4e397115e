"""Recipe sections for the data build and synthetic data generation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from embedpipe.config_base import Section
from embedpipe.encoder.instructions import task_type


class SourceConfig(Section):
    """One training source and its weight in each stage's mix (0 leaves it out of that stage)."""

    name: str
    kind: Literal["beir", "hf", "jsonl", "parquet", "pydoc", "synthetic"]
    path: str | None = None  # folder or file (local or s3://); HF dataset name for kind=hf
    split: str = "train"
    task_type: str = "retrieval"
    instruction: str | None = None
    language: str = "en"
    weight_stage1: float = Field(0.0, ge=0)
    weight_stage2: float = Field(1.0, ge=0)
    max_records: int | None = Field(None, gt=0)
    layout: str | None = None  # column layout (embedpipe.data.sources.LAYOUTS); inferred from columns when unset
    subset: str | None = None  # HF dataset config (e.g. a MIRACL language)
    min_score: float | None = None  # STS pairs below this score are not positives
    holdout_fraction: float = Field(0.15, ge=0, lt=1)  # pydoc: share of sections held out as the evaluation task
    # pydoc: a further share held out as the task's dev split (model selection: stage-2 variants, ablation cells,
    # greedy soup), disjoint from both the training records and the test split
    dev_fraction: float = Field(0.15, ge=0, lt=1)

    @field_validator("task_type")
    @classmethod
    def _known_task_type(cls, value: str) -> str:
        return task_type(value).value

    @model_validator(mode="after")
    def _held_out_shares_leave_training(self) -> "SourceConfig":
        if self.holdout_fraction + self.dev_fraction >= 1:
            raise ValueError(f"source {self.name!r}: holdout_fraction + dev_fraction is "
                             f"{self.holdout_fraction + self.dev_fraction:g}; they must leave sections to train on (< 1)")
        return self


class GeneratorConfig(Section):
    """One LLM of the SDG mix; ``share`` is its fraction of the generated records."""

    name: str
    backend: Literal["transformers", "vllm", "openai"]
    model: str
    share: float = Field(1.0, gt=0)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    tensor_parallel_size: int = Field(1, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    # a cap on new tokens; by default each call gets the budget its template asks for (sdg.token_budget)
    max_new_tokens: int | None = Field(None, gt=0)
    # extra new tokens for a reasoning model's analysis before its answer (gpt-oss: harmony analysis channel)
    reasoning_tokens: int = Field(0, ge=0)
    # "harmony": gpt-oss's response format, only the final channel is kept; "auto": harmony for gpt-oss models
    output_format: Literal["auto", "plain", "harmony"] = "auto"
    batch_size: int = Field(8, gt=0)  # prompts per forward (transformers) / requests in flight (openai)
    max_retries: int = Field(2, ge=0)  # openai client retries per request
    request_timeout: float = Field(120.0, gt=0)
    max_model_len: int | None = Field(None, gt=0)  # vllm engine context length
    threads: int | None = Field(None, gt=0)  # transformers: torch threads while generating (1 is best on busy CPUs)


class SDGConfig(Section):
    enabled: bool = True
    generators: list[GeneratorConfig] = Field(default_factory=list)
    tasks: list[Literal["query_generation", "retrieval_triplet", "classification", "sts", "bitext"]] = Field(
        default_factory=lambda: ["query_generation"]
    )
    languages: list[str] = Field(default_factory=lambda: ["en"])
    records_per_task: int = Field(32, gt=0)
    shard_size: int = Field(16, gt=0)
    second_step_generator: str | None = None  # cross-model generation: step two by another model
    min_chars: int = Field(8, ge=1)
    max_chars: int = Field(2000, gt=1)
    consistency_top_k: int | None = Field(20, gt=0)
    seed_corpus: str = "pydoc"  # "pydoc" (Python's own docs, on every machine) or a source name / path
    max_prompt_document_chars: int = Field(2000, gt=0)  # seed documents are cut to this in prompts
    teacher: str = "all-minilm-l6-v2"  # embedder of the consistency filter (multilingual at scale)
    teacher_device: str = "auto"  # "auto": cuda when there is one, else cpu
    teacher_batch_size: int = Field(64, gt=0)
    brainstorm_tasks: int = Field(8, gt=0)  # tasks asked for in step one of two-step generation
    seed: int = 42  # in a recipe: derived from the root seed (embedpipe.recipe.derive_seed)

    @model_validator(mode="after")
    def _second_step_generator_is_a_generator(self) -> "SDGConfig":
        names = {g.name for g in self.generators}
        if self.second_step_generator and self.second_step_generator not in names:
            raise ValueError(f"sdg.second_step_generator {self.second_step_generator!r} is not one of: "
                             f"{', '.join(sorted(names)) or '(no generators)'}")
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=list)
    decontaminate_against: list[str] = Field(default_factory=list)
    seed: int = 42  # in a recipe: derived from the root seed (embedpipe.recipe.derive_seed)
    stage1_records: int | None = Field(None, gt=0)
    stage2_records: int | None = Field(None, gt=0)
    lenient: bool = True
