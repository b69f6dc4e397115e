"""The recipe: one typed object loaded from YAML, with errors that name the file and the offending key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from embedpipe.config_base import Section
from embedpipe.data.config import DataConfig, SDGConfig
from embedpipe.evaluation.config import EvaluationConfig
from embedpipe.merging.config import MergeConfig
from embedpipe.mining.config import MiningConfig
from embedpipe.orchestration.config import AblationConfig, Toleration
from embedpipe.training.config import TrainingConfig


class ModelConfig(Section):
    base: str  # "smollm2-135m-instruct" (packaged), a checkpoint folder, a .gguf file, or a hub id on clusters
    max_query_length: int = Field(512, gt=0)
    max_document_length: int = Field(512, gt=0)
    random_init: dict[str, int] | None = None  # tiny random-initialised Llama (hidden_size, layers) for tests


class HubConfig(Section):
    """Hugging Face Hub access of the cluster steps: one download step fills a model cache PVC that the GPU steps
    mount; ``offline`` (a pre-filled cache) skips the download and keeps every step off the network."""

    offline: bool = False
    token_secret: str | None = "embedpipe-hf"  # Kubernetes Secret with key HF_TOKEN (gated models: Llama); optional
    cache_pvc: str | None = "embedpipe-model-cache"  # ReadWriteMany PVC; None: no cache volume (local runs)
    cache_path: str = "/models"  # where the PVC is mounted; HF_HOME is <cache_path>/hf
    shm_size: str = "16Gi"  # /dev/shm (memory-backed emptyDir) of GPU steps: NCCL, vLLM workers, DataLoader
    extra_models: list[str] = Field(default_factory=list)  # more hub repos to fetch
    extra_datasets: list[str] = Field(default_factory=list)


class PipelineConfig(Section):
    """Where artifacts and tracking go; local folder + SQLite by default, s3:// + an MLflow server by config alone."""

    artifact_root: str = ".embedpipe/runs"
    mlflow_tracking_uri: str = "sqlite:///.embedpipe/mlflow.db"
    s3_endpoint: str | None = None  # e.g. "minio.embedpipe.svc:9000"; credentials from AWS_ACCESS_KEY_ID/SECRET
    s3_secure: bool = True
    image_registry: str = "ghcr.io/embedpipe"
    image_tag: str = "0.1.0"
    gpu_node_selector: dict[str, str] = Field(default_factory=lambda: {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"})
    gpu_accelerator: str = "nvidia.com/gpu"
    register_model_name: str | None = None
    runner: Literal["local", "kfp"] = "local"
    stage2_parallelism: int = Field(0, ge=0)  # stage-2 runs at once (0: all); 1 on a laptop bounds memory
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    s3_secret: str = "embedpipe-s3"  # Kubernetes Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    mlflow_secret: str = "embedpipe-mlflow"  # Kubernetes Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD
    kfp_host: str | None = None  # the KFP API endpoint `embedpipe submit` sends to
    namespace: str = "kubeflow"  # where multi-node training jobs are created
    job_timeout_s: int = Field(7 * 24 * 3600, gt=0)  # a multi-node training job that runs longer fails the step
    ablation: AblationConfig = Field(default_factory=AblationConfig)
    hub: HubConfig = Field(default_factory=HubConfig)


class Recipe(Section):
    name: str
    description: str = ""
    seed: int = 42
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    sdg: SDGConfig = Field(default_factory=SDGConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @property
    def experiment_name(self) -> str:
        return f"embedpipe-{self.name}"

    def flat_params(self) -> dict[str, str]:
        """The recipe flattened to ``section.key`` strings (MLflow parameters)."""
        return flatten(self.model_dump(mode="json"))


class RecipeError(ValueError):
    """A recipe file that cannot be read or does not validate; the message names the file and the key."""


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = str(tree)
    return out


def set_override(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_recipe(path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Load and validate a recipe; ``overrides`` are ``section.key=value`` strings (YAML-parsed values) or a dict."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(tree).__name__}")
    return recipe_from_tree(tree, overrides, origin=str(path))


def recipe_from_tree(tree: dict, overrides: dict[str, Any] | list[str] | None = None, origin: str = "recipe") -> Recipe:
    """Apply ``section.key`` overrides to a parsed recipe and validate it; errors name ``origin`` and the key."""
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides or []]
    for key, value in items:
        set_override(tree, key, value)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else "")
            for e in err.errors()
        )
        raise RecipeError(f"{origin}: {problems}") from None


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def recipes_dir() -> Path:
    """The recipes shipped with the repository (``recipes/`` beside the package)."""
    return Path(__file__).resolve().parent.parent / "recipes"
