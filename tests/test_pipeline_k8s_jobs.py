"""The multi-node training launcher: the PyTorchJob it builds, and its wait/fail/timeout state machine driven through
the real kubernetes client against a local HTTP server replaying recorded job status objects."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from embedpipe.orchestration import k8s_jobs

PATH = "/apis/kubeflow.org/v1/namespaces/kubeflow/pytorchjobs"


def recorded(*conditions: tuple[str, str, str]) -> dict:
    """A PyTorchJob as the training operator reports it: conditions (type, status, time)."""
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "j", "namespace": "kubeflow"},
            "status": {"conditions": [{"type": t, "status": s, "lastTransitionTime": at, "reason": f"PyTorchJob{t}",
                                       "message": f"PyTorchJob j is {t.lower()}."} for t, s, at in conditions]}}


CREATED = recorded(("Created", "True", "2025-01-01T00:00:00Z"))
RUNNING = recorded(("Created", "True", "2025-01-01T00:00:00Z"), ("Running", "True", "2025-01-01T00:01:00Z"))
SUCCEEDED = recorded(("Created", "True", "2025-01-01T00:00:00Z"), ("Running", "False", "2025-01-01T00:09:00Z"),
                     ("Succeeded", "True", "2025-01-01T00:09:00Z"))
FAILED = recorded(("Created", "True", "2025-01-01T00:00:00Z"), ("Running", "False", "2025-01-01T00:05:00Z"),
                  ("Failed", "True", "2025-01-01T00:05:00Z"))
FAILED["status"]["conditions"][-1]["message"] = "PyTorchJob j has failed because 1 Master replica(s) failed."


class FakeApiServer:
    """Answers GET with the next recorded status (or an HTTP error code), records POST and DELETE bodies."""

    def __init__(self, responses: list):
        self.responses = list(responses)
        self.delete_status = 200
        self.post_status = 201
        self.requests: list[tuple[str, str, dict | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                outer.requests.append(("GET", self.path, None))
                item = outer.responses.pop(0) if len(outer.responses) > 1 else outer.responses[0]
                if isinstance(item, int):
                    self._reply(item, {"kind": "Status", "code": item})
                else:
                    self._reply(200, item)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(("POST", self.path, body))
                if outer.post_status == 201:
                    self._reply(201, body)
                else:
                    self._reply(outer.post_status, {"kind": "Status", "code": outer.post_status,
                                                    "reason": "AlreadyExists"})

            def do_DELETE(self):
                outer.requests.append(("DELETE", self.path, None))
                self._reply(outer.delete_status, {"kind": "Status", "status": "Success", "code": outer.delete_status})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(configuration)

    def close(self):
        self.server.shutdown()


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_succeeds_through_transient_errors():
    server = FakeApiServer([CREATED, 503, RUNNING, RUNNING, SUCCEEDED])
    clock = Clock()
    try:
        job = k8s_jobs.wait_for_job(server.client(), "j", "kubeflow", timeout_s=600, poll_s=10, clock=clock,
                                    sleep=clock.sleep)
    finally:
        server.close()
    assert k8s_jobs.job_state(job)[0] == "Succeeded"
    assert [m for m, _, _ in server.requests] == ["GET"] * 5
    assert server.requests[0][1] == f"{PATH}/j"
    assert clock.now == 40


def test_failed_job_fails_the_step_with_the_operator_message():
    server = FakeApiServer([CREATED, RUNNING, FAILED])
    clock = Clock()
    try:
        with pytest.raises(k8s_jobs.TrainingJobFailed, match="1 Master replica\\(s\\) failed"):
            k8s_jobs.wait_for_job(server.client(), "j", "kubeflow", timeout_s=600, poll_s=10, clock=clock,
                                  sleep=clock.sleep)
    finally:
        server.close()


def test_timeout_deletes_the_job():
    server = FakeApiServer([RUNNING])
    clock = Clock()
    try:
        with pytest.raises(k8s_jobs.TrainingJobTimeout, match="did not finish within 60s \\(last state: Running\\)"):
            k8s_jobs.wait_for_job(server.client(), "j", "kubeflow", timeout_s=60, poll_s=10, clock=clock,
                                  sleep=clock.sleep)
    finally:
        server.close()
    assert server.requests[-1][:2] == ("DELETE", f"{PATH}/j")


def test_timeout_whose_delete_fails_says_so():
    """The job may still hold its GPUs: the error must not claim it was deleted, and names the command to do it."""
    server = FakeApiServer([RUNNING])
    server.delete_status = 403
    clock = Clock()
    try:
        with pytest.raises(k8s_jobs.TrainingJobTimeout, match="deleting it failed .*kubectl -n kubeflow delete "
                                                               "pytorchjob j") as caught:
            k8s_jobs.wait_for_job(server.client(), "j", "kubeflow", timeout_s=60, poll_s=10, clock=clock,
                                  sleep=clock.sleep)
        assert "it was deleted" not in str(caught.value)
    finally:
        server.close()


def test_job_that_disappears_or_is_forbidden():
    for responses, error in (([404], k8s_jobs.TrainingJobFailed), ([403], Exception)):
        server = FakeApiServer(responses)
        clock = Clock()
        try:
            with pytest.raises(error):
                k8s_jobs.wait_for_job(server.client(), "j", "kubeflow", timeout_s=60, poll_s=10, clock=clock,
                                      sleep=clock.sleep)
        finally:
            server.close()


def test_manifest_and_create():
    spec = k8s_jobs.JobSpec(
        name="embedpipe-x-stage1", namespace="kubeflow", image="ghcr.io/embedpipe/embedpipe-train:0.1.0",
        launch_args=["--stage", "stage1", "--records", "s3://b/records.jsonl", "--out", "s3://b/model"],
        recipe_json='{"name": "x"}', nodes=4, gpus_per_node=8,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        secret_envs={"embedpipe-s3": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID"}},
    )
    manifest = k8s_jobs.pytorchjob_manifest(spec)
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert manifest["spec"]["nprocPerNode"] == "8"
    pod = replicas["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "pytorch"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert ("exec torchrun -m embedpipe.training.launch --recipe-env EMBEDPIPE_RECIPE_JSON --stage stage1"
            in container["command"][2])
    assert pod["serviceAccountName"] == "embedpipe-pipeline-runner"
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000}
    assert replicas["Worker"]["template"]["metadata"]["labels"]["embedpipe.io/s3-access"] == "true"  # NetworkPolicy
    env = {e["name"]: e for e in container["env"]}
    assert json.loads(env["EMBEDPIPE_RECIPE_JSON"]["value"]) == {"name": "x"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "embedpipe-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert {k: env[k]["value"] for k in k8s_jobs.NCCL_ENV} == k8s_jobs.NCCL_ENV
    trainjob = k8s_jobs.trainjob_manifest(spec)
    assert trainjob["spec"]["trainer"]["env"] == container["env"]  # one env for both launchers
    assert k8s_jobs.build_manifest(spec, "pytorchjob") == manifest and k8s_jobs.build_manifest(spec, "trainjob") == trainjob

    server = FakeApiServer([CREATED])
    try:
        k8s_jobs.create_job(server.client(), manifest)
    finally:
        server.close()
    method, path, body = server.requests[0]
    assert (method, path) == ("POST", PATH) and body == manifest


def test_job_names_come_from_the_run_and_a_retried_launcher_reuses_its_job():
    import re

    name = k8s_jobs.job_name("llama-embed-nemotron-8b", "7f3c0a1e-run", "stage2", "Mix_B" * 20)
    assert name == k8s_jobs.job_name("llama-embed-nemotron-8b", "7f3c0a1e-run", "stage2", "Mix_B" * 20)
    assert name != k8s_jobs.job_name("llama-embed-nemotron-8b", "another-run", "stage2", "Mix_B" * 20)
    assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    with pytest.raises(ValueError, match="run_id"):
        k8s_jobs.job_name("x", "{{$.pipeline_job_uuid}}", "stage1")

    server = FakeApiServer([RUNNING])
    server.post_status = 409  # the first attempt of the launcher created it
    try:
        job = k8s_jobs.create_job(server.client(), {"metadata": {"name": "j", "namespace": "kubeflow"}})
    finally:
        server.close()
    assert [m for m, _, _ in server.requests] == ["POST", "GET"] and job == RUNNING


def test_queue_name_labels_the_job_and_every_gpu_pod_of_the_pipeline(tmp_path):
    from kfp import compiler

    from embedpipe.orchestration.cluster import QUEUE_LABEL, ClusterSettings
    from embedpipe.pipelines.full import build_full_pipeline

    spec = k8s_jobs.JobSpec(name="j", namespace="kubeflow", image="i", launch_args=[], recipe_json="{}", nodes=2,
                            gpus_per_node=8, queue_name="gpu-a100")
    assert k8s_jobs.pytorchjob_manifest(spec)["metadata"]["labels"][QUEUE_LABEL] == "gpu-a100"

    compiler.Compiler().compile(build_full_pipeline(ClusterSettings(gpus_per_node=8, queue_name="gpu-a100")),
                                str(tmp_path / "full.yaml"))
    import yaml

    docs = list(yaml.safe_load_all((tmp_path / "full.yaml").read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    labelled = {name for name, ex in executors.items() if (ex.get("podMetadata") or {}).get("labels", {}).get(
        QUEUE_LABEL) == "gpu-a100"}
    gpu_steps = {f"exec-{n}" for n in ("synthesize", "mine", "train-stage1", "train-stage2", "evaluate")}
    assert gpu_steps <= labelled, sorted(labelled)


def trainjob_spec(**extra):
    return k8s_jobs.JobSpec(
        name="embedpipe-x-stage1-0123456789", namespace="kubeflow", image="ghcr.io/embedpipe/embedpipe-train:0.1.0",
        launch_args=["--stage", "stage1", "--records", "s3://b/r.jsonl", "--init-model", "m", "--out", "s3://b/model"],
        recipe_json='{"name": "x"}', nodes=8,
        gpus_per_node=8, node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        secret_envs={"embedpipe-s3": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID"}}, **extra)


def test_trainjob_validates_against_the_trainer_v2_crd(tmp_path):
    from crd_schemas import crd_validate, run_validator

    manifest = k8s_jobs.trainjob_manifest(trainjob_spec(queue_name="gpu-a100"))
    assert manifest["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert manifest["spec"]["trainer"]["numNodes"] == 8 and manifest["spec"]["trainer"]["numProcPerNode"] == 8
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-a100"
    assert "exec torchrun -m embedpipe.training.launch" in manifest["spec"]["trainer"]["command"][2]
    pod = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "embedpipe-pipeline-runner" and pod_spec["securityContext"]["runAsNonRoot"]
    assert "1 objects checked" in crd_validate([manifest], tmp_path, "trainjob")
    bad = dict(manifest, spec={**manifest["spec"], "trainer": {**manifest["spec"]["trainer"], "nprocPerNode": 8}})
    assert run_validator([bad], tmp_path, "bad").returncode == 1  # strict: an unknown field is refused
    with pytest.raises(ValueError, match="torch-distributed or deepspeed-distributed"):
        k8s_jobs.trainjob_manifest(trainjob_spec(), runtime="mpi-distributed")


def test_deepspeed_runtime_trainjob_runs_mpirun_over_the_trainer_hostfile(tmp_path):
    """deepspeed-distributed is MPI-launched (its ClusterTrainingRuntime: mlPolicy.mpi, a launcher job that is also
    a node, sshd in the node pods): the launcher runs mpirun over Trainer's hostfile and forwards the env."""
    import shlex

    import yaml
    from crd_schemas import crd_validate, shared_dir

    manifest = k8s_jobs.trainjob_manifest(trainjob_spec(), runtime="deepspeed-distributed")
    assert manifest["spec"]["runtimeRef"]["name"] == "deepspeed-distributed"
    words = shlex.split(manifest["spec"]["trainer"]["command"][2])
    assert words[:4] == ["exec", "mpirun", "--hostfile", "/etc/mpi/hostfile"]
    tail = words[words.index("python"):]
    assert tail[:3] == ["python", "-m", "embedpipe.training.launch"]
    from embedpipe.training.launch import parse_args

    assert parse_args(tail[3:]).recipe_env == "EMBEDPIPE_RECIPE_JSON"
    forwarded = {words[i + 1] for i, w in enumerate(words) if w == "-x"}
    assert {e["name"] for e in manifest["spec"]["trainer"]["env"]} <= forwarded  # remote ranks see the same env
    jobs = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert [j["name"] for j in jobs] == ["launcher", "node"]
    shared = shared_dir()
    if shared is not None:  # the patched jobs are the runtime's own, and it is the MPI one
        runtime = yaml.safe_load("\n".join(line for line in (shared / "schemas" / "deepspeed-distributed.runtime.yaml")
                                          .read_text().splitlines() if "{{" not in line))
        assert "mpi" in runtime["spec"]["mlPolicy"]
        assert {j["name"] for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]} == {j["name"] for j in jobs}
    assert "1 objects checked" in crd_validate([manifest], tmp_path, "deepspeed")


def test_mpi_ranks_become_torch_distributed_ranks(tmp_path):
    from embedpipe.training.launch import mpi_to_torch_env

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("embedpipe-x-node-0-0.embedpipe-x slots=8\nembedpipe-x-node-0-1.embedpipe-x slots=8\n")
    ompi = {"OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    assert mpi_to_torch_env(ompi, str(hostfile)) == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1",
                                                      "MASTER_PORT": "29500",
                                                      "MASTER_ADDR": "embedpipe-x-node-0-0.embedpipe-x"}
    assert mpi_to_torch_env({}, str(hostfile)) == {}  # not under mpirun
    assert mpi_to_torch_env({**ompi, "RANK": "3"}, str(hostfile)) == {}  # torchrun set them
    with pytest.raises(RuntimeError, match="hostfile .*missing"):
        mpi_to_torch_env(ompi, str(tmp_path / "missing"))


def test_recipe_runtime_is_checked_when_the_recipe_loads():
    from embedpipe.training.config import TrainingConfig

    assert TrainingConfig(backend="deepspeed", runtime="deepspeed-distributed").runtime == "deepspeed-distributed"
    with pytest.raises(ValueError, match="runtime"):
        TrainingConfig(runtime="mpi-distributed")


def test_trainjob_wait_reads_complete_and_failed():
    done = {"status": {"conditions": [{"type": "Created", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
                                      {"type": "Complete", "status": "True", "lastTransitionTime": "2025-01-01T01:00:00Z",
                                       "message": "TrainJob is completed"}]}}
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": "2025-01-01T01:00:00Z",
                                         "message": "trainer node-0 failed"}]}}
    server = FakeApiServer([{"status": {}}, done])
    clock = Clock()
    try:
        k8s_jobs.wait_for_job(server.client(), "j", "kubeflow", timeout_s=600, poll_s=1, clock=clock,
                              sleep=clock.sleep, kind=k8s_jobs.TRAINJOB)
        assert server.requests[0][1] == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/kubeflow/trainjobs/j"
        server.responses = [failed]
        with pytest.raises(k8s_jobs.TrainingJobFailed, match="TrainJob kubeflow/j failed: trainer node-0 failed"):
            k8s_jobs.wait_for_job(server.client(), "j", "kubeflow", timeout_s=600, poll_s=1, clock=clock,
                                  sleep=clock.sleep, kind=k8s_jobs.TRAINJOB)
    finally:
        server.close()


def test_every_manifest_the_launcher_submits_for_the_paper_recipe_validates(tmp_path):
    """What run_distributed_stage submits (stage_manifest: the one builder), for stage 1 and every stage-2 variant,
    on both Trainer runtimes and with a Kueue queue, against the TrainJob CRD (strict)."""
    from pathlib import Path

    from crd_schemas import crd_validate

    from embedpipe.orchestration.steps import variant_name
    from embedpipe.recipe import load_recipe

    path = Path(__file__).resolve().parent.parent / "recipes" / "llama-embed-nemotron-8b.yaml"
    docs = []
    for runtime, backend in (("torch-distributed", "fsdp"), ("deepspeed-distributed", "deepspeed")):
        recipe = load_recipe(path, ["pipeline.queue_name=gpu-a100", f"training.runtime={runtime}",
                                    f"training.backend={backend}"])
        docs.append(k8s_jobs.stage_manifest(recipe, "stage1", k8s_jobs.job_name(recipe.name, "run-1", "stage1"),
                                            recipe.model.base))
        for v in recipe.training.variants():
            name = k8s_jobs.job_name(recipe.name, "run-1", "stage2", variant_name(v.overrides()))
            docs.append(k8s_jobs.stage_manifest(recipe, "stage2", name, "s3://embedpipe/runs/x/stage1", v.overrides()))
    assert len(docs) == 2 * (1 + len(recipe.training.variants()))
    assert {d["spec"]["runtimeRef"]["name"] for d in docs} == {"torch-distributed", "deepspeed-distributed"}
    assert all(d["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-a100" for d in docs)
    assert crd_validate(docs, tmp_path, "paper").startswith(f"{len(docs)} objects checked (TrainJob), 0 errors")
