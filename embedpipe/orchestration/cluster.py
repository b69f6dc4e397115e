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
    queue_name: str | None = None  # Kueue LocalQueue of every GPU pod

    @classmethod
    def from_recipe(cls, recipe) -> "ClusterSettings":
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
            queue_name=p.queue_name,
        )


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
    if settings.queue_name:  # Kueue admits the pod from this LocalQueue (pod integration)
        kubernetes.add_pod_label(task, label_key=QUEUE_LABEL, label_value=settings.queue_name)
    return with_s3(task, settings)


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
