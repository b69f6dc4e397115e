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


# NCCL settings of every training pod (both launchers): warnings only, InfiniBand when the pool has it, the pod's
# primary interface for the bootstrap, async error handling so a dead peer fails the step instead of hanging it
NCCL_ENV = {"NCCL_DEBUG": "WARN", "NCCL_IB_DISABLE": "0", "NCCL_SOCKET_IFNAME": "eth0",
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
# k8s/base/rbac: the identity of pipeline pods; k8s/base/network admits pods with these labels to MinIO and MLflow
SERVICE_ACCOUNT = "embedpipe-pipeline-runner"
POD_LABELS = {"app.kubernetes.io/part-of": "embedpipe", "app": "embedpipe-train", "embedpipe.io/s3-access": "true",
              "embedpipe.io/mlflow-access": "true"}
RUNTIMES = ("torch-distributed", "deepspeed-distributed")  # the ClusterTrainingRuntimes a Trainer install ships
MPI_HOSTFILE = "/etc/mpi/hostfile"  # where Trainer's MPI plugin mounts the hostfile (kubeflow SDK: MPI_HOSTFILE)


@dataclass
class JobSpec:
    """Everything a training job manifest says, whatever its kind (one spec, one builder per kind)."""

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
    service_account: str | None = SERVICE_ACCOUNT
    run_as_user: int = 1000  # non-root (the deepspeed-distributed runtime's sshd runs as uid 1000 too)
    suspend: bool = False  # k8s/ templates are suspended: applying them must not start 64 GPUs


def job_labels(spec: JobSpec) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": "embedpipe"}
    if spec.queue_name:
        labels["kueue.x-k8s.io/queue-name"] = spec.queue_name
    return labels


def _env(spec: JobSpec) -> list[dict]:
    env = [{"name": "EMBEDPIPE_RECIPE_JSON", "value": spec.recipe_json}]
    env += [{"name": k, "value": v} for k, v in sorted({**NCCL_ENV, **spec.env}.items())]
    for secret, keys in sorted(spec.secret_envs.items()):
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for key, var in sorted(keys.items())]
    return env


def _resources(spec: JobSpec) -> dict:
    resources = {"cpu": spec.cpu, "memory": spec.memory, spec.gpu_resource: str(spec.gpus_per_node)}
    return {"requests": dict(resources), "limits": dict(resources)}


def _pod_spec(spec: JobSpec, containers: list[dict]) -> dict:
    """The pod settings both launchers share: node pool, identity, non-root, shared memory in RAM."""
    pod = {"nodeSelector": dict(spec.node_selector), "tolerations": list(spec.tolerations),
           "securityContext": {"runAsNonRoot": True, "runAsUser": spec.run_as_user, "fsGroup": spec.run_as_user},
           "containers": containers,
           "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm}}]}
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    return pod


_MOUNTS = [{"name": "dshm", "mountPath": "/dev/shm"}]


def _launch_script(spec: JobSpec, launcher: str = "exec torchrun -m embedpipe.training.launch") -> str:
    return f"{launcher} " + " ".join(shlex.quote(a) for a in ["--recipe-env", "EMBEDPIPE_RECIPE_JSON",
                                                               *spec.launch_args])


def pytorchjob_manifest(spec: JobSpec) -> dict:
    """A kubeflow.org/v1 PyTorchJob: one Master and ``nodes - 1`` Workers, ``gpus_per_node`` processes each."""
    container = {"name": "pytorch",  # the operator's required container name
                 "image": spec.image, "command": ["/bin/sh", "-c", _launch_script(spec)], "env": _env(spec),
                 "resources": _resources(spec), "volumeMounts": list(_MOUNTS)}
    pod = {"metadata": {"labels": dict(POD_LABELS)}, "spec": {"restartPolicy": "OnFailure",
                                                              **_pod_spec(spec, [container])}}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if spec.nodes > 1:
        replicas["Worker"] = {"replicas": spec.nodes - 1, "restartPolicy": "OnFailure", "template": pod}
    run_policy = {"backoffLimit": 3, "cleanPodPolicy": "None"}
    if spec.suspend:
        run_policy["suspend"] = True
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": job_labels(spec)},
        "spec": {"nprocPerNode": str(spec.gpus_per_node), "runPolicy": run_policy, "pytorchReplicaSpecs": replicas},
    }


def trainjob_manifest(spec: JobSpec, runtime: str = "torch-distributed") -> dict:
    """A Kubeflow Trainer v2 TrainJob on the ClusterTrainingRuntime ``runtime``, ``nodes`` x ``gpus_per_node``
    processes; node pool, identity, security context, NCCL env and the shared-memory volume go in as a runtime patch
    of the runtime's pods.

    - ``torch-distributed``: every node runs ``torchrun`` (the torch plugin sets its PET_* rendezvous variables).
    - ``deepspeed-distributed``: MPI. The launcher (also a node: ``runLauncherAsNode``) runs ``mpirun`` over Trainer's
      hostfile (``numProcPerNode`` slots per node, as the kubeflow SDK's DeepSpeed entrypoint does); the node pods run
      sshd. ``mpirun -x`` forwards the pod's env to the remote ranks, and ``embedpipe.training.launch`` maps Open
      MPI's ranks to torch.distributed's (``mpi_to_torch_env``). The train image carries Open MPI and the runtime's
      sshd set-up (docker/mpi/).

    The client is the kubernetes one, not the kubeflow SDK (0.5) TrainerClient: its ``train()`` reads the runtime
    from the API first (cluster-scoped read rights for the launcher, and no offline rendering of k8s/ from the same
    builder), and it raises every create error as a RuntimeError (the ApiException only as its ``__cause__``), where a
    retried launcher needs the 409 to find its job (read in kubeflow 0.5.0's ``backends/kubernetes/backend.py``).
    Its RuntimePatch options produce the same ``runtimePatches`` shape this builds."""
    if runtime not in RUNTIMES:
        raise ValueError(f"training.runtime {runtime!r}: embedpipe runs on {' or '.join(RUNTIMES)}")
    group = TRAINJOB.group
    if runtime == "deepspeed-distributed":
        forwarded = " ".join(f"-x {e['name']}" for e in _env(spec))
        launcher = (f"exec mpirun --hostfile {MPI_HOSTFILE} --bind-to none -x PATH -x LD_LIBRARY_PATH {forwarded} "
                    "python -m embedpipe.training.launch")
        command = ["/bin/sh", "-c", _launch_script(spec, launcher)]
        jobs = ["launcher", "node"]
    else:
        command = ["/bin/sh", "-c", _launch_script(spec)]
        jobs = ["node"]
    container = {"name": "node", "volumeMounts": list(_MOUNTS)}  # env: trainer.env (and mpirun -x for MPI ranks)
    pod = {"metadata": {"labels": dict(POD_LABELS)}, "spec": _pod_spec(spec, [container])}
    trainjob_spec = {
        "runtimeRef": {"name": runtime, "apiGroup": group, "kind": "ClusterTrainingRuntime"},
        "trainer": {"image": spec.image, "command": command, "env": _env(spec), "numNodes": spec.nodes,
                    "numProcPerNode": spec.gpus_per_node, "resourcesPerNode": _resources(spec)},
        "runtimePatches": [{"manager": "embedpipe.io/launcher", "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": job, "template": {"spec": {"template": pod}}} for job in jobs]}}}}],
    }
    if spec.suspend:
        trainjob_spec["suspend"] = True
    return {
        "apiVersion": f"{group}/{TRAINJOB.version}",
        "kind": TRAINJOB.kind,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": job_labels(spec)},
        "spec": trainjob_spec,
    }


def build_manifest(spec: JobSpec, launcher: str, runtime: str = "torch-distributed") -> dict:
    """The manifest ``training.launcher`` submits (the one builder per kind)."""
    if launcher not in KINDS:
        raise ValueError(f"training.launcher {launcher!r}: one of {', '.join(KINDS)}")
    return trainjob_manifest(spec, runtime) if KINDS[launcher] is TRAINJOB else pytorchjob_manifest(spec)


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


def create_job(api_client, manifest: dict, kind: JobKind = PYTORCHJOB, timeout_s: float = 600.0, poll_s: float = 2.0,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Create the job. When it exists already (a retried launcher step: same run, same name) the existing one is
    returned and waited on, unless it ended in Failed: then it is deleted (foreground: its pods go first) and created
    again under the same name, and its pods resume from the last checkpoint in the job's folder."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(api_client)
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        return api.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, manifest)
    except ApiException as err:
        if err.status != 409:
            raise
    existing = api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
    state, message = job_state(existing)
    if state != "Failed":
        log.info("%s %s/%s exists (a retried launcher): waiting on it", kind.kind, namespace, name)
        return existing
    log.warning("%s %s/%s failed before (%s): deleting it and starting it again; it resumes from its last checkpoint",
                kind.kind, namespace, name, message or "no message")
    api.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name,
                                        propagation_policy="Foreground")
    deadline = clock() + timeout_s
    while True:
        try:
            api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
        except ApiException as err:
            if err.status == 404:
                break
            raise
        if clock() >= deadline:
            raise TrainingJobTimeout(f"{kind.kind} {namespace}/{name} (failed) was not deleted within "
                                     f"{timeout_s:.0f}s; delete it by hand (kubectl -n {namespace} delete "
                                     f"{kind.kind.lower()} {name}) and retry")
        sleep(poll_s)
    return api.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, manifest)


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


def stage_launch(pipeline, stage: str, job_name: str, init_uri: str, variant: dict | None) -> tuple[str, list[str]]:
    """(the job's S3 folder, the ``embedpipe.training.launch`` arguments) of one stage run as job ``job_name``."""
    from embedpipe import storage

    root = storage.join(pipeline.artifact_root, "jobs", job_name)
    args = ["--stage", stage, "--records", storage.join(root, "records.jsonl"), "--init-model", init_uri,
            "--out", storage.join(root, "model"), "--checkpoint-dir", storage.join(root, "checkpoints"),
            "--trusted-records"]  # the mining step's output, staged by the launcher: validated once, when made
    if variant:
        args += ["--variant", json.dumps(variant, sort_keys=True)]
    return root, args


def job_spec(recipe, job_name: str, launch_args: list[str], suspend: bool = False) -> JobSpec:
    """The JobSpec of a recipe's multi-node stage: image, node pool, GPUs, secrets and queue from its sections."""
    from embedpipe import tracking
    from embedpipe.orchestration.images import image

    pipeline, training = recipe.pipeline, recipe.training
    env = {"EMBEDPIPE_S3_ENDPOINT": pipeline.s3_endpoint or "", "EMBEDPIPE_S3_SECURE": str(pipeline.s3_secure).lower(),
           "MLFLOW_TRACKING_URI": pipeline.mlflow_tracking_uri,
           **tracking.worker_env()}  # rank 0 logs into the launcher's child run (tracking.training_run)
    return JobSpec(
        name=job_name, namespace=pipeline.namespace, image=image("train", pipeline.image_registry, pipeline.image_tag),
        launch_args=launch_args, recipe_json=recipe.model_dump_json(), nodes=training.nodes,
        gpus_per_node=training.gpus_per_node, gpu_resource=pipeline.gpu_accelerator,
        node_selector=dict(pipeline.gpu_node_selector),
        tolerations=[t.model_dump(exclude_none=True) for t in pipeline.gpu_tolerations],
        secret_envs={pipeline.s3_secret: {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                          "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}},
        env=env, queue_name=pipeline.queue_name, suspend=suspend,
    )


def stage_manifest(recipe, stage: str, job_name: str, init_uri: str, variant: dict | None = None,
                   suspend: bool = False) -> dict:
    """The manifest the launcher submits for ``stage`` (``training.launcher`` / ``training.runtime`` of the recipe)."""
    _, args = stage_launch(recipe.pipeline, stage, job_name, init_uri, variant)
    spec = job_spec(recipe, job_name, args, suspend=suspend)
    return build_manifest(spec, recipe.training.launcher, recipe.training.runtime)


TEMPLATE_NAME = "embedpipe-train"


def render_templates(recipe) -> dict[str, dict]:
    """k8s/base/training: stage 1 of ``recipe`` as each launcher kind would submit it (named ``embedpipe-train``,
    suspended, so that ``kubectl apply`` shows the object without starting a job). ``embedpipe render-training``
    writes them; a test checks that the committed files equal this."""
    out = {}
    for launcher, runtime, filename in (("trainjob", recipe.training.runtime, "trainjob.yaml"),
                                        ("pytorchjob", None, "pytorchjob.yaml")):
        section = {"launcher": launcher, **({"runtime": runtime} if runtime else {})}
        variant = recipe.model_copy(update={"training": recipe.training.model_copy(update=section)})
        out[filename] = stage_manifest(variant, "stage1", TEMPLATE_NAME, recipe.model.base, suspend=True)
    return out


def write_templates(recipe, out_dir, source: str) -> list:
    """Write :func:`render_templates` as YAML files under ``out_dir`` (a header names the recipe and the command)."""
    from pathlib import Path

    import yaml

    paths = []
    for filename, manifest in render_templates(recipe).items():
        path = Path(out_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# Generated by `embedpipe render-training --recipe {source}` from the launcher's builder\n"
                  f"# (embedpipe.orchestration.k8s_jobs); do not edit. Suspended: unsuspend to run stage 1.\n")
        path.write_text(header + yaml.safe_dump(manifest, sort_keys=False, width=120))
        paths.append(path)
    return paths


def run_distributed_stage(recipe, stage: str, records_dir: str, init_model: str, out_dir: str,
                          variant: dict | None, job_name: str, api_client=None, poll_s: float = 30.0) -> dict:
    """Stage inputs on S3, run the stage as a TrainJob / PyTorchJob, wait, and download the export into ``out_dir``.

    A retried launcher (same run, same ``job_name``) finds its job again (409) and waits on it; the job's pods resume
    from the last checkpoint under the job's folder."""
    from pathlib import Path

    from embedpipe import storage

    pipeline = recipe.pipeline
    if not storage.is_remote(pipeline.artifact_root):
        raise ValueError("multi-node training needs pipeline.artifact_root on s3:// (the workers read their inputs there)")
    storage.configure(pipeline.s3_endpoint, pipeline.s3_secure)
    root = storage.join(pipeline.artifact_root, "jobs", job_name)
    storage.upload(Path(records_dir) / "records.jsonl", storage.join(root, "records.jsonl"))
    init_uri = init_model
    if Path(init_model).exists():
        init_uri = storage.join(root, "init")
        storage.upload(init_model, init_uri)
    out_uri = storage.join(root, "model")
    manifest = stage_manifest(recipe, stage, job_name, init_uri, variant)
    if api_client is None:
        from embedpipe.deploy.apply import kube_client

        api_client = kube_client()
        if api_client is None:
            raise RuntimeError("no Kubernetes API to create the training job (no kubeconfig, not in a cluster)")
    kind = KINDS[recipe.training.launcher]
    create_job(api_client, manifest, kind, poll_s=min(poll_s, 5.0))
    wait_for_job(api_client, job_name, pipeline.namespace, timeout_s=pipeline.job_timeout_s, poll_s=poll_s, kind=kind)
    storage.download(out_uri, out_dir)
    summary_path = Path(out_dir) / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {**summary, "job": f"{pipeline.namespace}/{job_name}", "model_uri": out_uri}
