"""The recipe: one typed object loaded from YAML, with errors that name the file and the offending key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from embedpipe.config_base import Section
from embedpipe.data.config import DataConfig, SDGConfig
from embedpipe.evaluation.config import EvaluationConfig
from embedpipe.merging.config import MergeConfig
from embedpipe.mining.config import MiningConfig
from embedpipe.orchestration.config import GPU_ACCELERATOR, GPU_NODE_SELECTOR, GPU_TOLERATIONS, AblationConfig, Toleration
from embedpipe.orchestration.images import DEFAULT_REGISTRY, DEFAULT_TAG
from embedpipe.training.config import TrainingConfig


class ModelConfig(Section):
    base: str  # "smollm2-135m-instruct" (packaged), a checkpoint folder, a .gguf file, or a hub id on clusters
    # (token lengths are per stage: training.stage1/stage2.max_query_length / max_document_length)
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
    image_registry: str = DEFAULT_REGISTRY
    image_tag: str = DEFAULT_TAG
    gpu_node_selector: dict[str, str] = Field(default_factory=lambda: dict(GPU_NODE_SELECTOR))
    gpu_accelerator: str = GPU_ACCELERATOR
    register_model_name: str | None = None
    runner: Literal["local", "kfp"] = "local"
    stage2_parallelism: int = Field(0, ge=0)  # stage-2 runs at once (0: all); 1 on a laptop bounds memory
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(**t) for t in GPU_TOLERATIONS]
    )
    s3_secret: str = "embedpipe-s3"  # Kubernetes Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    mlflow_secret: str = "embedpipe-mlflow"  # Kubernetes Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD
    kfp_host: str | None = None  # the KFP API endpoint `embedpipe submit` sends to
    namespace: str = "kubeflow"  # where multi-node training jobs are created
    job_timeout_s: int = Field(7 * 24 * 3600, gt=0)  # a multi-node training job that runs longer fails the step
    queue_name: str | None = None  # Kueue LocalQueue (label kueue.x-k8s.io/queue-name) of GPU pods and training jobs
    ablation: AblationConfig = Field(default_factory=AblationConfig)
    hub: HubConfig = Field(default_factory=HubConfig)


SEEDED_SECTIONS = ("data", "sdg", "mining", "training")


def derive_seed(root: int, area: str) -> int:
    """An area's seed from the recipe's one ``seed``: today the root seed itself.

    Every area salts it with what it draws for (``f"{seed}:{stage}"`` in the mix, ``f"{seed}:{task}"`` in SDG, the
    record id in mining, the step in training), so equal numbers give independent streams, and runs made before the
    single seed reproduce exactly. The sections keep a ``seed`` field so each area reads only its own section; a
    recipe sets only the root one.
    """
    return int(root)


class Recipe(Section):
    name: str
    description: str = ""
    seed: int = 42  # the one seed; data, sdg, mining and training derive theirs from it (derive_seed)
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    sdg: SDGConfig = Field(default_factory=SDGConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="before")
    @classmethod
    def _derive_seeds(cls, tree: Any) -> Any:
        if not isinstance(tree, dict):
            return tree
        tree = dict(tree)
        root = tree.get("seed", 42)
        for area in SEEDED_SECTIONS:
            section = tree.get(area)
            if section is None:
                section = {}
            if not isinstance(section, dict):
                continue  # an already-built section object (Recipe(...) in code) keeps its seed
            if "seed" in section and section["seed"] != derive_seed(root, area):
                raise ValueError(f"{area}.seed: set the recipe's root `seed` instead; every area derives its seed "
                                 f"from it (got {area}.seed={section['seed']!r}, root seed {root!r})")
            if isinstance(root, int):
                tree[area] = {**section, "seed": derive_seed(root, area)}
        return tree

    @model_validator(mode="after")
    def _cross_section_rules(self) -> "Recipe":
        """Rules that join two sections: ablation axes name real variants and generators, merge weights fit."""
        variants = [v.name for v in self.training.variants()]
        grid = self.pipeline.ablation
        for i, merge_set in enumerate(grid.merge_sets):
            missing = sorted(set(merge_set) - set(variants))
            if missing or not merge_set:
                raise ValueError(f"pipeline.ablation.merge_sets[{i}]: {merge_set} names no or unknown stage-2 "
                                 f"variants {missing}; known: {variants}")
        generators = {g.name for g in self.sdg.generators}
        for mix in grid.generator_mixes:
            unknown = sorted(set(mix.shares) - generators)
            if unknown:
                raise ValueError(f"pipeline.ablation.generator_mixes ({mix.name}): unknown generators {unknown}; "
                                 f"the recipe has {sorted(generators)}")
            second = self.sdg.second_step_generator
            if second and not mix.shares.get(second):
                raise ValueError(f"pipeline.ablation.generator_mixes ({mix.name}): leaves out "
                                 f"sdg.second_step_generator {second!r}; give it a share > 0")
        if grid.losses:  # the loss axis sets every stage's loss; a variant's own would keep the axis from it
            own = [f"training.stage2_variants ({v.name}).loss" for v in self.training.stage2_variants if v.loss]
            if own:
                raise ValueError(f"pipeline.ablation.losses sets the loss of every stage, but {', '.join(own)} "
                                 "sets its own; remove the variant's loss to ablate it")
        weights = self.merge.weights
        if self.merge.method == "weighted" and weights is not None:
            for merged in grid.merge_sets or [variants]:
                if len(weights) != len(merged):
                    raise ValueError(f"merge.weights: {len(weights)} weights for the {len(merged)} stage-2 variants "
                                     f"merged ({merged}); give one weight per variant")
        return self

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
    """Set ``section.key`` (``data.sources.0.path``: a number indexes a list) in a parsed recipe."""
    node: Any = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override {dotted!r}: {part!r} is not an index of {'.'.join(parts[:i])} "
                                  f"(it has {len(node)} items)")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise RecipeError(f"override {dotted!r}: {parts[i - 1]!r} is not a section")


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
            (f"{_where(tree, e['loc'])}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
            + (f" (got {e['input']!r})" if e["type"] not in ("missing", "value_error")
               and not isinstance(e["input"], dict) else "")
            for e in err.errors()
        )
        raise RecipeError(f"{origin}: {problems}") from None


def section_from_overrides(section: str, model: type[Section], overrides: list[str], origin: str = "--set"):
    """One recipe section built from ``section.key=value`` overrides alone (an area's CLI without a recipe file);
    parsed and reported exactly like a recipe's overrides."""
    tree: dict = {}
    for key, value in (_split_override(o) for o in overrides):
        if not key.startswith(f"{section}."):
            raise RecipeError(f"{origin}: without a recipe, overrides look like {section}.key=value, got {key!r}")
        set_override(tree, key, value)
    try:
        return model.model_validate(tree.get(section, {}))
    except ValidationError as err:
        problems = "; ".join(f"{_where(tree, (section, *e['loc']))}: {e['msg']}" for e in err.errors())
        raise RecipeError(f"{origin}: {problems}") from None


def _where(tree: Any, loc: tuple) -> str:
    """``training.stage2_variants[1] (mix-b).batch_size``: list items are named by their ``name`` when they have one."""
    out, node = "", tree
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and node.get("name"):
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def recipes_dir() -> Path:
    """The recipes shipped with the repository (``recipes/`` beside the package)."""
    return Path(__file__).resolve().parent.parent / "recipes"
