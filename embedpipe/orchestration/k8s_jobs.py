"""Multi-node training as a Kubeflow Trainer v2 TrainJob (or a v1 PyTorchJob, training.launcher: pytorchjob): the
manifest, creation with the kubernetes client, and a wait loop that succeeds with the job, fails the step when the job fails, and gives up (deleting the job) after a timeout.

The launcher stages its inputs on S3 (with completion markers), every worker pod runs ``torchrun -m
embedpipe.training.launch`` (the training operator sets the PET_* rendezvous variables), rank 0 writes the export
to S3, and the launcher downloads it as its output artifact.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"  # Training Operator v1 (training.launcher: pytorchjob)


@dataclass(frozen=True)
class JobKind:
    """The custom resource a launcher creates and how its conditions read."""

    kind: str
    group: str
    version: str
    plural: str
    succeeded: str  # the condition type that ends the job well


PYTORCHJOB = JobKind("PyTorchJob", GROUP, VERSION, PLURAL, "Succeeded")
TRAINJOB = JobKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete")  # Kubeflow Trainer v2
KINDS = {"pytorchjob": PYTORCHJOB, "trainjob": TRAINJOB}


class TrainingJobFailed(RuntimeError):
    """The training job ended in Failed; the message carries the operator's reason."""


class TrainingJobTimeout(TimeoutError):
    """The training job did not finish within the step's timeout (it was deleted)."""


@dataclass
class JobSpec:
    name: str
    namespace: str
    image: str
    launch_args: list[str]  # arguments of `python -m embedpipe.training.launch`
    recipe_json: str
    nodes: int
    gpus_per_node: int
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    secret_envs: dict[str, dict[str, str]] = field(default_factory=dict)  # secret -> {key: ENV}
    env: dict[str, str] = field(default_factory=dict)
    cpu: str = "16"
    memory: str = "200Gi"
    shm: str = "64Gi"
    queue_name: str | None = None  # Kueue LocalQueue: label on the job (Kueue's PyTorchJob/TrainJob integration)


def job_labels(spec: JobSpec) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": "embedpipe"}
    if spec.queue_name:
        labels["kueue.x-k8s.io/queue-name"] = spec.queue_name
    return labels


def pytorchjob_manifest(spec: JobSpec) -> dict:
    """A kubeflow.org/v1 PyTorchJob: one Master and ``nodes - 1`` Workers, ``gpus_per_node`` processes each."""
    command = (
        'printf "%s" "$EMBEDPIPE_RECIPE_JSON" > /tmp/recipe.json && exec torchrun -m embedpipe.training.launch '
        + " ".join(shlex.quote(a) for a in ["--recipe", "/tmp/recipe.json", *spec.launch_args])
    )
    env = [{"name": "EMBEDPIPE_RECIPE_JSON", "value": spec.recipe_json}]
    env += [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    for secret, keys in sorted(spec.secret_envs.items()):
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for key, var in sorted(keys.items())]
    resources = {"cpu": spec.cpu, "memory": spec.memory, spec.gpu_resource: str(spec.gpus_per_node)}
    pod = {
        "metadata": {"labels": {"app.kubernetes.io/part-of": "embedpipe"}},
        "spec": {
            "restartPolicy": "OnFailure",
            "nodeSelector": dict(spec.node_selector),
            "tolerations": list(spec.tolerations),
            "containers": [{
                "name": "pytorch",  # the operator's required container name
                "image": spec.image,
                "command": ["/bin/sh", "-c", command],
                "env": env,
                "resources": {"requests": dict(resources), "limits": dict(resources)},
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm}}],
        },
    }
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if spec.nodes > 1:
        replicas["Worker"] = {"replicas": spec.nodes - 1, "restartPolicy": "OnFailure", "template": pod}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": job_labels(spec)},
        "spec": {
            "nprocPerNode": str(spec.gpus_per_node),
            "runPolicy": {"backoffLimit": 3, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": replicas,
        },
    }


def _launch_command(spec: JobSpec) -> str:
    return ('printf "%s" "$EMBEDPIPE_RECIPE_JSON" > /tmp/recipe.json && exec torchrun -m embedpipe.training.launch '
            + " ".join(shlex.quote(a) for a in ["--recipe", "/tmp/recipe.json", *spec.launch_args]))


def _env(spec: JobSpec) -> list[dict]:
    env = [{"name": "EMBEDPIPE_RECIPE_JSON", "value": spec.recipe_json}]
    env += [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    for secret, keys in sorted(spec.secret_envs.items()):
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for key, var in sorted(keys.items())]
    return env


def trainjob_manifest(spec: JobSpec, runtime: str = "torch-distributed") -> dict:
    """A Kubeflow Trainer v2 TrainJob on the ClusterTrainingRuntime ``runtime``: ``nodes`` nodes x ``gpus_per_node``
    processes (the torch plugin sets torchrun's PET_* rendezvous variables); node pool, tolerations and the shared
    memory volume go in as a runtime patch of the runtime's ``node`` job."""
    if runtime != "torch-distributed":
        raise ValueError(f"training.runtime {runtime!r}: only torch-distributed runs embedpipe.training.launch under "
                         "torchrun (the DeepSpeed backend runs on it too; deepspeed-distributed is MPI-launched)")
    resources = {"cpu": spec.cpu, "memory": spec.memory, spec.gpu_resource: str(spec.gpus_per_node)}
    pod = {"nodeSelector": dict(spec.node_selector), "tolerations": list(spec.tolerations),
           "containers": [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}],
           "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm}}]}
    return {
        "apiVersion": f"{TRAINJOB.group}/{TRAINJOB.version}",
        "kind": TRAINJOB.kind,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": job_labels(spec)},
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": TRAINJOB.group, "kind": "ClusterTrainingRuntime"},
            "trainer": {"image": spec.image, "command": ["/bin/sh", "-c", _launch_command(spec)], "env": _env(spec),
                        "numNodes": spec.nodes, "numProcPerNode": spec.gpus_per_node,
                        "resourcesPerNode": {"requests": dict(resources), "limits": dict(resources)}},
            "runtimePatches": [{"manager": "embedpipe.io/launcher", "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": pod}}}}]}}}}],
        },
    }


def job_name(recipe_name: str, run_id: str, *parts: str) -> str:
    """A DNS-1035 job name derived from the pipeline run (not random): the same run and stage give the same name, so
    a retried launcher step finds the job it created instead of starting a second one."""
    import hashlib
    import re

    if not run_id or "{{" in run_id:
        raise ValueError("multi-node training needs the pipeline run's id (run_id) to name its job")
    digest = hashlib.sha256("/".join([run_id, *parts]).encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9-]+", "-", "-".join(["embedpipe", recipe_name, *parts]).lower()).strip("-")
    return f"{stem[:63 - len(digest) - 1].rstrip('-')}-{digest}"


def job_state(job: dict) -> tuple[str, str]:
    """(state, message) from a PyTorchJob's status conditions: the latest condition whose status is True."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    if not conditions:
        return "Pending", ""
    latest = max(enumerate(conditions), key=lambda ic: (str(ic[1].get("lastTransitionTime", "")), ic[0]))[1]
    return str(latest.get("type")), str(latest.get("message") or latest.get("reason") or "")


def create_job(api_client, manifest: dict, kind: JobKind = PYTORCHJOB) -> dict:
    """Create the job; when it exists already (a retried launcher step) the existing one is returned and waited on."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(api_client)
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        return api.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, manifest)
    except ApiException as err:
        if err.status != 409:
            raise
    log.info("%s %s/%s exists (a retried launcher): waiting on it", kind.kind, namespace, name)
    return api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)


def delete_job(api_client, name: str, namespace: str, kind: JobKind = PYTORCHJOB) -> None:
    from kubernetes import client

    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(kind.group, kind.version, namespace,
                                                                        kind.plural, name)


def wait_for_job(api_client, name: str, namespace: str, timeout_s: float, poll_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 kind: JobKind = PYTORCHJOB) -> dict:
    """Poll the job until it succeeds (Succeeded / TrainJob Complete: returns it), Failed (raises TrainingJobFailed) or the timeout (deletes the
    job, raises TrainingJobTimeout). Transient API errors (5xx, connection) are retried until the timeout."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(api_client)
    deadline = clock() + timeout_s
    last = None
    while True:
        try:
            job = api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
        except ApiException as err:
            if err.status == 404:
                raise TrainingJobFailed(f"{kind.kind} {namespace}/{name} disappeared (deleted while running?)") from None
            if err.status < 500:
                raise
            log.warning("reading %s %s/%s: HTTP %s, retrying", kind.kind, namespace, name, err.status)
            job = None
        except OSError as err:  # urllib3 connection errors are OSErrors
            log.warning("reading %s %s/%s: %s, retrying", kind.kind, namespace, name, err)
            job = None
        if job is not None:
            state, message = job_state(job)
            if state != last:
                log.info("%s %s/%s: %s %s", kind.kind, namespace, name, state, message)
                last = state
            if state == kind.succeeded:
                return job
            if state == "Failed":
                raise TrainingJobFailed(f"{kind.kind} {namespace}/{name} failed: {message or 'no message'}")
        if clock() >= deadline:
            message = (f"{kind.kind} {namespace}/{name} did not finish within {timeout_s:.0f}s "
                       f"(last state: {last or 'unknown'})")
            try:
                delete_job(api_client, name, namespace, kind)
            except Exception as err:  # say that the job may still hold GPUs, and why it was not deleted
                why = f"HTTP {err.status} {err.reason}" if isinstance(err, ApiException) else str(err)
                raise TrainingJobTimeout(f"{message}; deleting it failed ({why}): delete it by hand "
                                         f"(kubectl -n {namespace} delete {kind.kind.lower()} {name})") from err
            raise TrainingJobTimeout(f"{message}; it was deleted")
        sleep(poll_s)


def run_distributed_stage(recipe, stage: str, records_dir: str, init_model: str, out_dir: str,
                          variant: dict | None, job_name: str, api_client=None, poll_s: float = 30.0) -> dict:
    """Stage inputs on S3, run the stage as a PyTorchJob, wait, and download the export into ``out_dir``."""
    from pathlib import Path

    from embedpipe import storage, tracking
    from embedpipe.orchestration.images import image

    pipeline = recipe.pipeline
    if not storage.is_remote(pipeline.artifact_root):
        raise ValueError("multi-node training needs pipeline.artifact_root on s3:// (the workers read their inputs there)")
    storage.configure(pipeline.s3_endpoint, pipeline.s3_secure)
    root = storage.join(pipeline.artifact_root, "jobs", job_name)
    records_uri = storage.join(root, "records.jsonl")
    storage.upload(Path(records_dir) / "records.jsonl", records_uri)
    init_uri = init_model
    if Path(init_model).exists():
        init_uri = storage.join(root, "init")
        storage.upload(init_model, init_uri)
    out_uri = storage.join(root, "model")
    args = ["--stage", stage, "--records", records_uri, "--init-model", init_uri, "--out", out_uri,
            "--checkpoint-dir", storage.join(root, "checkpoints")]
    if variant:
        args += ["--variant", json.dumps(variant, sort_keys=True)]
    env = {"EMBEDPIPE_S3_ENDPOINT": pipeline.s3_endpoint or "", "EMBEDPIPE_S3_SECURE": str(pipeline.s3_secure).lower(),
           "MLFLOW_TRACKING_URI": pipeline.mlflow_tracking_uri,
           **tracking.worker_env()}  # rank 0 logs into the launcher's child run (tracking.training_run)
    spec = JobSpec(
        name=job_name, namespace=pipeline.namespace, image=image("train", pipeline.image_registry, pipeline.image_tag),
        launch_args=args, recipe_json=recipe.model_dump_json(), nodes=recipe.training.nodes,
        gpus_per_node=recipe.training.gpus_per_node, gpu_resource=pipeline.gpu_accelerator,
        node_selector=pipeline.gpu_node_selector,
        tolerations=[t.model_dump(exclude_none=True) for t in pipeline.gpu_tolerations],
        secret_envs={pipeline.s3_secret: {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                          "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}},
        env=env, queue_name=pipeline.queue_name,
    )
    if api_client is None:
        from embedpipe.deploy.apply import kube_client

        api_client = kube_client()
        if api_client is None:
            raise RuntimeError("no Kubernetes API to create the training job (no kubeconfig, not in a cluster)")
    kind = KINDS[recipe.training.launcher]
    manifest = trainjob_manifest(spec, recipe.training.runtime) if kind is TRAINJOB else pytorchjob_manifest(spec)
    create_job(api_client, manifest, kind)
    wait_for_job(api_client, job_name, pipeline.namespace, timeout_s=pipeline.job_timeout_s, poll_s=poll_s, kind=kind)
    storage.download(out_uri, out_dir)
    summary_path = Path(out_dir) / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {**summary, "job": f"{pipeline.namespace}/{job_name}", "model_uri": out_uri}
