"""Recipe section for the two training stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from embedpipe.config_base import Section

LossName = Literal["hard_negative_infonce", "in_batch", "same_tower", "gecko", "qwen3", "gemini"]


class StageConfig(Section):
    """One stage's optimisation settings (TRL style: a config dataclass beside its trainer)."""

    name: str = "stage"  # run and artifact name; defaults to the stage ("stage1", "stage2")
    task_types: list[str] | None = None  # None = every task type in the data
    # this stage's loss; None: ``training.loss`` (e.g. in-batch negatives for a short retrieval pre-training, as
    # NV-Embed's stage 1, and the paper's hard-negative-only loss in fine-tuning)
    loss: LossName | None = None
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


class Stage2Variant(Section):
    """One stage-2 run: a name and the ``training.stage2`` settings it changes (unset fields keep stage 2's).

    Typed like :class:`StageConfig`, so ``learnig_rate`` or ``batch_size: 0`` is an error when the recipe loads, and
    the error names the variant (``training.stage2_variants[1] (mix-b).batch_size``).
    """

    name: str = Field(min_length=1)
    task_types: list[str] | None = None
    loss: LossName | None = None
    learning_rate: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    micro_batch_size: int | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    hard_negatives: int | None = Field(None, ge=0)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: Literal["linear", "constant", "cosine"] | None = None
    weight_decay: float | None = Field(None, ge=0)
    max_query_length: int | None = Field(None, gt=0)
    max_document_length: int | None = Field(None, gt=0)
    gradient_checkpointing: bool | None = None
    checkpoint_every: int | None = Field(None, gt=0)
    data_weights: dict[str, float] | None = None
    max_grad_norm: float | None = Field(None, gt=0)
    max_tokens_per_forward: int | None = Field(None, gt=0)
    log_every: int | None = Field(None, gt=0)
    short_records: Literal["error", "drop"] | None = None

    def overrides(self) -> dict:
        """The settings this variant sets, with its name (the dict ``train_stage(variant=...)`` takes)."""
        return self.model_dump(exclude_none=True)

    def resolve(self, base: StageConfig) -> StageConfig:
        """``base`` with this variant's settings; the run is named ``<base name>-<variant name>``."""
        merged = {**base.model_dump(), **self.overrides(), "name": f"{base.name}-{self.name}"}
        return StageConfig.model_validate(merged)


class TrainingConfig(Section):
    backend: Literal["torch", "deepspeed", "fsdp"] = "torch"
    deepspeed_config: str | None = None
    loss: LossName = "hard_negative_infonce"
    temperature: float = Field(0.02, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 42  # in a recipe: derived from the root seed (embedpipe.recipe.derive_seed)
    stage1: StageConfig = Field(default_factory=lambda: StageConfig(name="stage1", hard_negatives=1))
    stage2: StageConfig = Field(default_factory=lambda: StageConfig(name="stage2", hard_negatives=4))
    stage2_variants: list[Stage2Variant] = Field(default_factory=list)  # empty: one run with ``stage2`` as it is
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=1)
    # the export's weights: "training" = the training dtype (bf16 under bf16 precision: half the bytes of fp32 for the
    # merge and serving), "fp32" on request
    export_dtype: Literal["training", "fp32"] = "training"
    # multi-node: a Kubeflow Trainer v2 TrainJob on this ClusterTrainingRuntime, or a v1 PyTorchJob ("pytorchjob")
    launcher: Literal["trainjob", "pytorchjob"] = "trainjob"
    # torch-distributed: torchrun on every node; deepspeed-distributed: MPI (mpirun over Trainer's hostfile)
    runtime: Literal["torch-distributed", "deepspeed-distributed"] = "torch-distributed"

    @model_validator(mode="before")
    @classmethod
    def _stages_named_after_themselves(cls, tree):
        """A stage's name defaults to its key: ``stage1`` / ``stage2`` (one name per stage everywhere)."""
        if isinstance(tree, dict):
            tree = dict(tree)
            for stage in ("stage1", "stage2"):
                if isinstance(tree.get(stage), dict) and "name" not in tree[stage]:
                    tree[stage] = {**tree[stage], "name": stage}
        return tree

    @field_validator("stage2_variants")
    @classmethod
    def _unique_variant_names(cls, variants: list[Stage2Variant]) -> list[Stage2Variant]:
        names = [v.name for v in variants]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"stage-2 variant names must be unique; {doubled} appear more than once")
        return variants

    def stage_loss(self, stage: StageConfig) -> str:
        """The loss a (resolved) stage trains with: its own, else the section's."""
        return stage.loss or self.loss

    def variants(self) -> list[Stage2Variant]:
        """The stage-2 runs: the recipe's variants, or one named after ``stage2`` when it lists none."""
        return list(self.stage2_variants) or [Stage2Variant(name=self.stage2.name)]
