"""Cluster settings of a compiled pipeline (node pool, tolerations, GPUs, secrets), from the recipe, and the
kfp-kubernetes calls that put them on tasks. The local runner ignores them; one definition serves both."""

from __future__ import annotations

from dataclasses import dataclass, field

from kfp import kubernetes

from embedpipe.orchestration.config import GPU_ACCELERATOR, GPU_NODE_SELECTOR, GPU_TOLERATIONS

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@dataclass(frozen=True)
class ClusterSettings:
    node_selector: dict[str, str] = field(default_factory=lambda: dict(GPU_NODE_SELECTOR))
    tolerations: tuple[dict, ...] = GPU_TOLERATIONS
    accelerator: str = GPU_ACCELERATOR
    gpus_per_node: int = 1
    multi_node: bool = False
    s3_secret: str = "embedpipe-s3"
    mlflow_secret: str = "embedpipe-mlflow"
    stage2_parallelism: int = 0
    hub_offline: bool = False
    hf_token_secret: str | None = "embedpipe-hf"
    model_cache_pvc: str | None = "embedpipe-model-cache"
    model_cache_path: str = "/models"
    shm_size: str = "16Gi"
    # (generator name, tensor-parallel degree) of the recipe's SDG mix: one task each, with that many GPUs
    sdg_generators: tuple[tuple[str, int], ...] = ()
    mining_embed_tasks: int = 1  # GPU tasks the corpus embedding fans out over before the mining step
    eval_groups: int = 1  # MTEB evaluation pods (task groups), merged into one results folder
    hub_env: bool = True  # False for kfp.local runs: no cache volume there, the machine's own HF settings apply
    queue_name: str | None = None  # Kueue LocalQueue of every GPU pod
    # the ablation grid's plan (embedpipe.orchestration.ablation.plan_grid, as JSON): the ablation pipeline unrolls it
    ablation_plan: str = ""
    dev_tasks: bool = True  # the recipe has dev tasks: the full pipeline scores each stage-2 model and the merge on them

    @classmethod
    def from_recipe(cls, recipe, local: bool = False) -> "ClusterSettings":
        """``local``: for kfp.local, which applies tasks' env variables (not their Kubernetes settings)."""
        p = recipe.pipeline
        return cls(
            node_selector=dict(p.gpu_node_selector),
            tolerations=tuple(t.model_dump(exclude_none=True) for t in p.gpu_tolerations),
            accelerator=p.gpu_accelerator,
            gpus_per_node=recipe.training.gpus_per_node,
            multi_node=recipe.training.nodes > 1,
            s3_secret=p.s3_secret,
            mlflow_secret=p.mlflow_secret,
            stage2_parallelism=p.stage2_parallelism,
            hub_offline=p.hub.offline, hf_token_secret=p.hub.token_secret, model_cache_pvc=p.hub.cache_pvc,
            model_cache_path=p.hub.cache_path, shm_size=p.hub.shm_size,
            sdg_generators=tuple((g.name, g.tensor_parallel_size) for g in recipe.sdg.generators)
            if recipe.sdg.enabled else (),
            mining_embed_tasks=recipe.mining.embed_tasks,
            eval_groups=recipe.evaluation.groups,
            hub_env=not local,
            queue_name=p.queue_name,
            ablation_plan=_ablation_plan(recipe),
            dev_tasks=has_dev_tasks(recipe),
        )

    @property
    def plan(self) -> dict | None:
        """The ablation plan (None for settings made without a recipe)."""
        import json

        return json.loads(self.ablation_plan) if self.ablation_plan else None

    @property
    def sdg_max_tp(self) -> int:
        return max((tp for _, tp in self.sdg_generators), default=1)


def has_dev_tasks(recipe) -> bool:
    """Whether the recipe gives dev tasks: MTEB dev splits, local dev tasks, or a pydoc source's held-out dev split."""
    ev = recipe.evaluation
    return bool(ev.dev_tasks or ev.dev_local_tasks or any(t.dev_split for t in ev.local_tasks)
                or any(s.kind == "pydoc" and s.dev_fraction > 0 for s in recipe.data.sources))


def _ablation_plan(recipe) -> str:
    import json

    from embedpipe.orchestration.ablation import plan_grid

    return json.dumps(plan_grid(recipe), sort_keys=True)


def on_gpus(task, settings: ClusterSettings, gpus: int, cpu: str = "8", memory: str = "64Gi"):
    """A GPU step: the A100 pool's node selector and tolerations, accelerator type and limit, resource requests."""
    task.set_accelerator_type(settings.accelerator)
    task.set_accelerator_limit(gpus)
    task.set_cpu_request(cpu)
    task.set_memory_request(memory)
    for key, value in settings.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in settings.tolerations:
        kubernetes.add_toleration(task, key=toleration.get("key"), operator=toleration.get("operator", "Exists"),
                                  value=toleration.get("value"), effect=toleration.get("effect"))
    with_models(task, settings)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=settings.shm_size)
    if settings.queue_name:  # Kueue admits the pod from this LocalQueue (pod integration)
        kubernetes.add_pod_label(task, label_key=QUEUE_LABEL, label_value=settings.queue_name)
    return with_s3(task, settings)


def with_models(task, settings: ClusterSettings, download: bool = False):
    """The model cache PVC at ``model_cache_path`` (HF_HOME on it) and hub access as a per-task setting: the download
    step (``download=True``) goes online unless ``hub_offline``; every other step reads the filled cache offline
    (with no cache volume configured, steps go to the hub themselves, unless ``hub_offline``). This overrides the
    images' HF_HUB_OFFLINE default. The token Secret is optional (public repos need none)."""
    if not settings.hub_env:
        return task
    if settings.model_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=settings.model_cache_pvc, mount_path=settings.model_cache_path)
        task.set_env_variable("HF_HOME", f"{settings.model_cache_path.rstrip('/')}/hf")
    online = not settings.hub_offline and (download or not settings.model_cache_pvc)
    task.set_env_variable("HF_HUB_OFFLINE", "0" if online else "1")
    if online and settings.hf_token_secret:
        kubernetes.use_secret_as_env(task, secret_name=settings.hf_token_secret,
                                     secret_key_to_env={"HF_TOKEN": "HF_TOKEN"}, optional=True)
    return task


def on_cpu(task, settings: ClusterSettings, cpu: str = "2", memory: str = "8Gi"):
    task.set_cpu_request(cpu)
    task.set_memory_request(memory)
    return with_s3(task, settings)


def with_s3(task, settings: ClusterSettings):
    """MinIO/S3 credentials from a Kubernetes Secret (s3:// sources, artifact root, checkpoints)."""
    kubernetes.use_secret_as_env(task, secret_name=settings.s3_secret,
                                 secret_key_to_env={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                                    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    return task


def with_mlflow(task, settings: ClusterSettings):
    """MLflow server credentials from a Kubernetes Secret (optional keys: an unauthenticated server needs none)."""
    kubernetes.use_secret_as_env(task, secret_name=settings.mlflow_secret,
                                 secret_key_to_env={"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                                    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
                                 optional=True)
    return task
