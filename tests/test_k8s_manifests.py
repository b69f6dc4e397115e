"""k8s/: every overlay renders with `kubectl kustomize` and every document validates offline (core kinds against the
Kubernetes schemas, KServe/Kubeflow custom resources against their SDKs' typed models); no credentials anywhere."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from embedpipe.deploy.kserve import render_inference_service, render_serving_runtime
from crd_schemas import CRD_KINDS, crd_validate
from embedpipe.deploy.validate import ManifestError, validate_document, validate_documents

K8S = Path(__file__).resolve().parent.parent / "k8s"
TARGETS = ["base", "overlays/local", "overlays/a100-cluster"]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: scripts/setup.sh --test installs it")
        pytest.skip("kubectl is not installed (bash scripts/setup.sh --test)")
    return path


def render(target: str) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {target: render(target) for target in TARGETS}


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


@pytest.mark.parametrize("target", TARGETS)
def test_overlay_renders_and_validates(rendered, target, tmp_path):
    docs = rendered[target]
    core = [d for d in docs if d["kind"] != "TrainJob"]  # TrainJob: no typed SDK model here, the CRD schema below
    assert validate_documents(core, target) == len(core)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "StatefulSet", "Deployment", "Service", "PersistentVolumeClaim", "ServiceAccount", "Role",
            "RoleBinding", "NetworkPolicy", "TrainJob", "ServingRuntime", "InferenceService"} <= kinds
    with_crd = [d for d in docs if d["kind"] in CRD_KINDS]
    assert crd_validate(docs, tmp_path, target).startswith(f"{len(with_crd)} objects checked")
    assert all(d["metadata"].get("namespace") == "embedpipe" for d in docs if d["kind"] != "Namespace")


def test_validation_catches_broken_documents(rendered):
    docs = rendered["base"]
    statefulset = copy.deepcopy(by_kind(docs, "StatefulSet", "minio")[0])
    statefulset["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    job = copy.deepcopy(yaml.safe_load((K8S / "base" / "training" / "pytorchjob.yaml").read_text()))
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replica"] = 1
    isvc = copy.deepcopy(by_kind(docs, "InferenceService")[0])
    isvc["spec"]["predictor"]["maxReplicas"] = "eight"
    with pytest.raises(ManifestError) as err:
        validate_documents([statefulset, job, isvc], "broken")
    text = str(err.value)
    assert "StatefulSet/minio" in text and "imagePullPolicy" in text
    assert "Master.replica: unknown field" in text
    assert "spec.predictor.maxReplicas: expected int" in text


def test_kserve_manifests_are_what_the_code_renders():
    def load(name):
        return yaml.safe_load((K8S / "base" / "kserve" / f"{name}.yaml").read_text())

    assert load("servingruntime-vllm") == render_serving_runtime("vllm")
    assert load("servingruntime-embedpipe") == render_serving_runtime("embedpipe")
    assert load("inferenceservice") == render_inference_service("embedpipe-embedder", "s3://embedpipe/models/merged",
                                                                namespace=None)


def trainjob_pod(job: dict) -> dict:
    """The pod template the launcher patches into the runtime's ``node`` job."""
    return job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]


def test_a100_training_job_template(rendered):
    job = by_kind(rendered["overlays/a100-cluster"], "TrainJob")[0]
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed" and job["spec"]["suspend"] is True
    assert trainer["numNodes"] == 8 and trainer["numProcPerNode"] == 8  # the paper: 64 A100
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    pod = trainjob_pod(job)["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "embedpipe-pipeline-runner" and pod["securityContext"]["runAsNonRoot"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    env = {e["name"] for e in trainer["env"]}
    assert {"NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "EMBEDPIPE_RECIPE_JSON"} <= env
    assert trainer["command"][2].startswith("exec torchrun -m embedpipe.training.launch")


def test_training_templates_are_what_the_launcher_builds():
    """k8s/base/training is rendered by the launcher's own builder (`embedpipe render-training`): the committed files
    equal its output for the paper recipe, byte for byte."""
    from embedpipe.orchestration.k8s_jobs import render_templates, write_templates
    from embedpipe.recipe import load_recipe

    recipe_path = "recipes/llama-embed-nemotron-8b.yaml"
    recipe = load_recipe(K8S.parent / recipe_path)
    folder = K8S / "base" / "training"
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(render_templates(recipe))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for path in write_templates(recipe, tmp, source=recipe_path):
            assert (folder / path.name).read_text() == path.read_text(), (
                f"k8s/base/training/{path.name} is stale: run `embedpipe render-training`")
    pytorchjob = yaml.safe_load((folder / "pytorchjob.yaml").read_text())
    assert validate_documents([pytorchjob], "pytorchjob.yaml") == 1  # kubeflow-training's typed model, strict
    pod = pytorchjob["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    trainjob_env = yaml.safe_load((folder / "trainjob.yaml").read_text())["spec"]["trainer"]["env"]
    def settings(env):  # the recipe JSON differs in training.launcher only
        return [e for e in env if e["name"] != "EMBEDPIPE_RECIPE_JSON"]

    assert settings(pod["containers"][0]["env"]) == settings(trainjob_env)  # the same NCCL env and secrets
    assert pod["serviceAccountName"] == "embedpipe-pipeline-runner"
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000}


def test_every_k8s_file_with_a_crd_validates(tmp_path):
    """Every object under k8s/ whose kind has an upstream CRD in ../shared/schemas validates strictly."""
    docs = [d for path in sorted(K8S.rglob("*.yaml")) for d in yaml.safe_load_all(path.read_text())
            if isinstance(d, dict) and d.get("kind") in CRD_KINDS]
    assert {d["kind"] for d in docs} >= {"TrainJob", "ServingRuntime", "InferenceService"}
    assert crd_validate(docs, tmp_path).startswith(f"{len(docs)} objects checked")


def test_local_overlay_needs_no_gpu(rendered):
    docs = rendered["overlays/local"]
    job = by_kind(docs, "TrainJob")[0]
    for doc in docs:  # the recipe JSON in the training env names the paper's node pool; no pod asks for it
        for env in _walk_env(doc):
            env.pop("value", None) if env["name"] == "EMBEDPIPE_RECIPE_JSON" else None
    text = yaml.safe_dump_all(docs)
    assert "nvidia.com/gpu" not in text and "gke-accelerator" not in text
    assert job["spec"]["trainer"]["numNodes"] == 1 and job["spec"]["trainer"]["numProcPerNode"] == 1
    isvc = by_kind(rendered["overlays/local"], "InferenceService")[0]
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "embedpipe-serve"
    assert [d["metadata"]["name"] for d in by_kind(rendered["overlays/local"], "ServingRuntime")] == ["embedpipe-serve"]
    images = re.findall(r"image: (\S+)", text)
    assert "localhost:5001/embedpipe-serve:dev" in images and "localhost:5001/embedpipe-train:dev" in images


def test_no_credentials_in_any_manifest(rendered):
    secret_name = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|ROOT_USER)", re.I)
    for target, docs in rendered.items():
        assert not by_kind(docs, "Secret"), f"{target} defines a Secret: create Secrets by hand (k8s/README.md)"
        for doc in docs:
            for env in _walk_env(doc):
                if secret_name.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (target, env)
    for path in K8S.rglob("*.yaml"):
        assert not re.search(r"(?i)(password|secret_access_key)\s*[:=]\s*['\"]?\w{6,}", path.read_text()), path


def _walk_env(node):
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            yield from node["env"]
        for value in node.values():
            yield from _walk_env(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_env(value)


def test_network_policies_admit_exactly_the_labelled_clients(rendered):
    docs = rendered["base"]
    policies = {p["spec"]["podSelector"]["matchLabels"]["app"]: p for p in by_kind(docs, "NetworkPolicy")}
    assert set(policies) == {"minio", "mlflow"}
    assert policies["minio"]["spec"]["ingress"][0]["ports"] == [{"port": 9000, "protocol": "TCP"}]
    # every pod that talks to MinIO carries the label the policy admits
    mlflow = by_kind(docs, "Deployment", "mlflow")[0]["spec"]["template"]["metadata"]["labels"]
    job = trainjob_pod(by_kind(docs, "TrainJob")[0])["metadata"]["labels"]
    isvc = by_kind(docs, "InferenceService")[0]["spec"]["predictor"]["labels"]
    for labels in (mlflow, job, isvc):
        assert labels["embedpipe.io/s3-access"] == "true"
    assert job["embedpipe.io/mlflow-access"] == "true"


def test_pipeline_runner_rbac_is_least_privilege(rendered):
    docs = rendered["base"]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    role = by_kind(docs, "Role", "embedpipe-pipeline-runner")[0]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"pods", "pytorchjobs", "trainjobs", "inferenceservices"} <= resources
    binding = by_kind(docs, "RoleBinding", "embedpipe-pipeline-runner")[0]
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "embedpipe-pipeline-runner",
                                      "namespace": "embedpipe"}
    reader = by_kind(docs, "ServiceAccount", "embedpipe-model-reader")[0]
    assert reader["secrets"] == [{"name": "embedpipe-s3"}] and reader["automountServiceAccountToken"] is False


def test_entrypoints_named_in_manifests_exist(rendered):
    from typer.main import get_command

    from embedpipe.cli import app

    commands = set(get_command(app).commands)
    runtime = by_kind(rendered["base"], "ServingRuntime", "embedpipe-serve")[0]
    assert runtime["spec"]["containers"][0]["args"][0] in commands
    import shlex

    job = by_kind(rendered["base"], "TrainJob")[0]
    words = shlex.split(job["spec"]["trainer"]["command"][2])
    assert words[:4] == ["exec", "torchrun", "-m", "embedpipe.training.launch"]
    launch = importlib.import_module(words[3])
    args = launch.parse_args(words[4:])  # argparse exits on an unknown or missing option
    assert args.stage == "stage1" and args.recipe_env == "EMBEDPIPE_RECIPE_JSON"
    env = {e["name"]: e.get("value") for e in job["spec"]["trainer"]["env"]}
    from embedpipe.recipe import recipe_from_tree

    import json

    assert recipe_from_tree(json.loads(env["EMBEDPIPE_RECIPE_JSON"])).training.nodes == 8


def test_single_documents_validate_without_kubectl():
    """The validator itself needs no cluster or kubectl (used by `embedpipe deploy` before applying)."""
    assert validate_document(render_inference_service("x", "s3://b/m")) == []
    assert validate_document({"apiVersion": "v1", "kind": "Frob", "metadata": {"name": "x"}})
