"""Recipe section for the two training stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from embedpipe.config_base import Section

LossName = Literal["hard_negative_infonce", "in_batch", "same_tower", "gecko", "qwen3", "gemini"]


class StageConfig(Section):
    """One stage's optimisation settings (TRL style: a config dataclass beside its trainer)."""

    name: str = "stage"
    task_types: list[str] | None = None  # None = every task type in the data
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(2048, gt=0)  # global batch (queries per optimiser step)
    micro_batch_size: int | None = Field(None, gt=0)  # per device per forward; the rest is gradient accumulation
    steps: int = Field(1000, gt=0)
    hard_negatives: int = Field(1, ge=0)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["linear", "constant", "cosine"] = "linear"
    weight_decay: float = Field(0.01, ge=0)
    max_query_length: int = Field(512, gt=0)
    max_document_length: int = Field(512, gt=0)
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = Field(None, gt=0)
    data_weights: dict[str, float] | None = None  # overrides of the sources' fine-tuning weights (stage-2 variants)
    max_grad_norm: float | None = Field(1.0, gt=0)  # gradient clipping (None: off; the norm is still logged)
    max_tokens_per_forward: int = Field(16384, gt=0)  # padded tokens per forward chunk (length-sorted packing)
    log_every: int = Field(1, gt=0)
    # records the miner left with fewer than `hard_negatives` negatives: "error" stops before any step (the default),
    # "drop" leaves them out of this stage, counted in the summary and the log
    short_records: Literal["error", "drop"] = "error"


class TrainingConfig(Section):
    backend: Literal["torch", "deepspeed", "fsdp"] = "torch"
    deepspeed_config: str | None = None
    loss: LossName = "hard_negative_infonce"
    temperature: float = Field(0.02, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 42
    stage1: StageConfig = Field(default_factory=lambda: StageConfig(name="pretrain", hard_negatives=1))
    stage2: StageConfig = Field(default_factory=lambda: StageConfig(name="finetune", hard_negatives=4))
    stage2_variants: list[dict] = Field(default_factory=list)  # each: {"name": ..., **StageConfig overrides}
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=1)
