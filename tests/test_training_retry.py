"""A retried training step resumes: the step runs its stage as two gloo processes (torch's elastic launcher, as it
would over a pod's GPUs), a worker killed after the step-2 checkpoint fails the step, and the retried step starts at
step 2 and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from embedpipe.data.schema import write_records
from embedpipe.orchestration import steps
from embedpipe.recipe import load_recipe
from embedpipe.training.run import FAULT_ENV
from tests.test_training_run import RECIPE, SMALL, make_records, same_weights

TWO = [*SMALL, "training.gpus_per_node=2", "training.stage1.checkpoint_every=2"]


@pytest.mark.slow
def test_a_retried_step_resumes_from_its_last_checkpoint(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_records(make_records(), tmp_path / "records" / "records.jsonl")
    recipe = load_recipe(RECIPE, TWO)
    reference = steps.train(recipe, "stage1", tmp_path / "records", str(tiny_encoder), tmp_path / "ref")
    assert reference["world_size"] == 2 and reference["start_step"] == 0

    monkeypatch.setenv(FAULT_ENV, "2")
    with pytest.raises(ChildFailedError):
        steps.train(recipe, "stage1", tmp_path / "records", str(tiny_encoder), tmp_path / "run",
                    checkpoint_dir=tmp_path / "ck")
    monkeypatch.delenv(FAULT_ENV)
    retried = steps.train(recipe, "stage1", tmp_path / "records", str(tiny_encoder), tmp_path / "run",
                          checkpoint_dir=tmp_path / "ck")
    assert retried["world_size"] == 2 and retried["start_step"] == 2, json.dumps(retried, default=str)[:500]
    assert retried["resumed_from"] == "step-00000002"
    assert same_weights(tmp_path / "ref", tmp_path / "run", atol=1e-6)


def test_checkpoints_live_under_the_runs_artifact_prefix():
    recipe = load_recipe(RECIPE, ["pipeline.artifact_root=s3://bucket/runs"])
    assert steps.checkpoint_folder(recipe, "run-1", "stage2", "mix b") == "s3://bucket/runs/run-1/checkpoints/stage2/mix-b"
    assert steps.checkpoint_folder(recipe, "{{$.pipeline_job_uuid}}", "stage1") is None  # unresolved: no folder
    assert steps.checkpoint_folder(recipe, "", "stage1") is None


def test_the_pipeline_gives_every_training_step_the_run_id():
    from kfp import compiler

    from embedpipe.pipelines.full import build_full_pipeline

    import tempfile
    from pathlib import Path

    compiled = compiler.Compiler()
    out = Path(tempfile.mkdtemp()) / "full.yaml"
    compiled.compile(build_full_pipeline(), str(out))
    text = out.read_text()
    assert text.count("{{$.pipeline_job_uuid}}") >= 2  # stage 1 and stage 2


class TrainerOperator:
    """A local stand-in for the Kubernetes API and Trainer's torch plugin, over HTTP (the kubernetes client talks to
    it): POST stores the TrainJob and runs its ``trainer.command`` with its ``trainer.env`` (secretKeyRefs resolved
    from ``secrets``) and the PET_* variables Trainer's torch plugin sets, on one node (``numNodes`` must be 1) with
    ``numProcPerNode`` gloo processes; GET reports Running, then Complete or Failed by the exit status; DELETE
    removes the job. ``faults`` pops an extra env for each job started (a node that dies after a checkpoint)."""

    def __init__(self, secrets: dict, workdir, faults: list[dict]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.jobs: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(("POST", body["metadata"]["name"]))
                if body["metadata"]["name"] in outer.jobs:
                    return self.reply(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                outer.start(body, secrets, workdir, faults.pop(0) if faults else {})
                self.reply(201, body)

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                outer.requests.append(("GET", name))
                job = outer.jobs.get(name)
                self.reply(200, outer.status(job)) if job else self.reply(404, {"kind": "Status", "code": 404})

            def do_DELETE(self):
                name = self.path.split("?")[0].rsplit("/", 1)[-1]
                outer.requests.append(("DELETE", name))
                job = outer.jobs.pop(name, None)
                if job and job["process"].poll() is None:
                    job["process"].kill()
                self.reply(200, {"kind": "Status", "status": "Success"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def start(self, manifest: dict, secrets: dict, workdir, fault: dict) -> None:
        import os
        import socket
        import subprocess
        import sys
        from pathlib import Path

        trainer = manifest["spec"]["trainer"]
        assert trainer["numNodes"] == 1, "this stand-in runs one node"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EMBEDPIPE_", "MLFLOW_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # torchrun of this venv
        for item in trainer["env"]:
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = secrets[ref["name"]][ref["key"]]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env.update({"PET_NNODES": "1", "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]), "PET_NODE_RANK": "0",
                    "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), **fault})
        log = open(Path(workdir) / f"job-{len(self.runs)}.log", "w")
        process = subprocess.Popen(trainer["command"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.jobs[manifest["metadata"]["name"]] = {"manifest": manifest, "process": process}
        self.runs.append({"name": manifest["metadata"]["name"], "fault": fault, "log": log.name})

    @staticmethod
    def status(job: dict) -> dict:
        code = job["process"].poll()
        state = "Running" if code is None else "Complete" if code == 0 else "Failed"
        message = f"trainer node-0 exited with {code}" if state == "Failed" else ""
        return {**job["manifest"], "status": {"conditions": [
            {"type": state, "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z", "message": message}]}}

    def client(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(configuration)

    def close(self):
        for job in self.jobs.values():
            if job["process"].poll() is None:
                job["process"].kill()
        self.server.shutdown()


def _log_excerpt(path) -> str:
    """A job's log for an assertion message: its first traceback (a rank's own error, which torchrun's summary
    does not repeat) and its end."""
    text = Path(path).read_text(errors="replace")
    start = text.find("Traceback")
    head = text[start:start + 6000] + "\n[...]\n" if start >= 0 else ""
    return f"=== {path}\n{head}{text[-2500:]}"


@pytest.fixture
def s3(monkeypatch):
    """A local S3 endpoint (moto's server: the S3 wire protocol the minio client speaks), with one bucket."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    creds = {"AWS_ACCESS_KEY_ID": "embedpipe-test", "AWS_SECRET_ACCESS_KEY": "embedpipe-test-secret"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    from embedpipe import storage

    storage.configure(f"127.0.0.1:{port}", False)
    storage.client().make_bucket("runs")
    yield f"127.0.0.1:{port}", creds
    server.stop()


@pytest.mark.slow
def test_a_retried_launcher_reuses_its_job_name_and_training_resumes(tiny_encoder, tmp_path, monkeypatch, s3):
    """The launcher step of a multi-node stage runs twice for one pipeline run: its TrainJob (2 gloo processes under
    torchrun, as Trainer's torch plugin starts them) dies after the step-2 checkpoint and the step fails; the retried
    launcher derives the same job name, gets 409, finds the job Failed, recreates it under that name, and training
    resumes at step 2 from the checkpoint in the job's S3 folder, ending with the weights of an uninterrupted run."""
    from embedpipe.orchestration import k8s_jobs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    endpoint, creds = s3
    write_records(make_records(), tmp_path / "records" / "records.jsonl")
    recipe = load_recipe(RECIPE, [*TWO, "training.nodes=1", "training.launcher=trainjob",
                                  "pipeline.artifact_root=s3://runs/embedpipe", f"pipeline.s3_endpoint={endpoint}",
                                  "pipeline.s3_secure=false", f"pipeline.mlflow_tracking_uri=file://{tmp_path}/mlruns"])
    reference = steps.train(recipe, "stage1", tmp_path / "records", str(tiny_encoder), tmp_path / "ref")
    assert reference["world_size"] == 2

    operator = TrainerOperator({"embedpipe-s3": creds}, tmp_path, faults=[{FAULT_ENV: "2"}])
    name = k8s_jobs.job_name(recipe.name, "run-7f3c", "stage1")
    try:
        for attempt in (1, 2):  # KFP retries the launcher step; same run id, so the same name
            out = tmp_path / f"attempt-{attempt}"
            assert k8s_jobs.job_name(recipe.name, "run-7f3c", "stage1") == name
            if attempt == 1:
                with pytest.raises(k8s_jobs.TrainingJobFailed, match="exited with"):
                    k8s_jobs.run_distributed_stage(recipe, "stage1", str(tmp_path / "records"), str(tiny_encoder),
                                                   str(out), None, name, api_client=operator.client(), poll_s=0.5)
            else:
                summary = k8s_jobs.run_distributed_stage(recipe, "stage1", str(tmp_path / "records"),
                                                         str(tiny_encoder), str(out), None, name,
                                                         api_client=operator.client(), poll_s=0.5)
    finally:
        operator.close()
    logs = "\n".join(_log_excerpt(r["log"]) for r in operator.runs)
    assert [r["name"] for r in operator.runs] == [name, name], logs
    assert ("DELETE", name) in operator.requests and operator.requests.count(("POST", name)) == 3  # 201, 409, 201
    assert summary["world_size"] == 2 and summary["start_step"] == 2, logs
    assert summary["resumed_from"] == "step-00000002" and summary["job"] == f"{recipe.pipeline.namespace}/{name}"
    assert summary["model_uri"] == f"s3://runs/embedpipe/jobs/{name}/model"
    assert same_weights(tmp_path / "ref", tmp_path / "attempt-2", atol=1e-6)
