"""The compiled pipelines' platform spec (kfp-kubernetes' per-executor settings) is valid twice over: each executor
parses strictly into kfp-kubernetes' own ``KubernetesExecutorConfig`` message (an unknown or misspelt field is an
error, where the KFP backend would ignore it), and the pod fields it turns into (node selector, tolerations, pod
labels, volumes, secret env) validate strictly against the Kubernetes schemas. There is no CRD for the platform spec
in ../shared/schemas (it is KFP's protobuf, not a Kubernetes object); the TrainJob the launcher submits at run time
is checked against its CRD in test_pipeline_k8s_jobs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from embedpipe.deploy.validate import validate_document

COMPILED = sorted((Path(__file__).resolve().parent.parent / "pipelines" / "compiled").glob("*.yaml"))


def executors(path: Path) -> dict[str, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())  # the pipeline spec itself, strictly
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}


def as_pod(name: str, config: dict) -> dict:
    """The pod fields the KFP driver sets from one executor's kfp-kubernetes settings."""
    container = {"name": "main", "image": "ghcr.io/embedpipe/embedpipe-base:0.1.0", "env": [], "volumeMounts": []}
    spec = {"containers": [container], "volumes": []}
    if "nodeSelector" in config:
        spec["nodeSelector"] = config["nodeSelector"].get("labels", {})
    if "tolerations" in config:
        spec["tolerations"] = config["tolerations"]
    for secret in config.get("secretAsEnv", []):
        for key in secret["keyToEnv"]:
            container["env"].append({"name": key["envVar"], "valueFrom": {"secretKeyRef": {
                "name": secret["secretName"], "key": key["secretKey"], "optional": secret.get("optional", False)}}})
    for i, mount in enumerate(config.get("pvcMount", [])):
        spec["volumes"].append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": mount["constant"]}})
        container["volumeMounts"].append({"name": f"pvc-{i}", "mountPath": mount["mountPath"]})
    for mount in config.get("emptyDirMounts", []):
        empty = {k: mount[k] for k in ("medium", "sizeLimit") if k in mount}
        spec["volumes"].append({"name": mount["volumeName"], "emptyDir": empty})
        container["volumeMounts"].append({"name": mount["volumeName"], "mountPath": mount["mountPath"]})
    metadata = {"name": name.replace("exec-", "step-")}
    if "podMetadata" in config:
        metadata.update({k: v for k, v in config["podMetadata"].items() if k in ("labels", "annotations")})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


KNOWN = {"secretAsEnv", "pvcMount", "nodeSelector", "emptyDirMounts", "tolerations", "podMetadata"}


@pytest.mark.parametrize("path", COMPILED, ids=[p.name for p in COMPILED])
def test_platform_spec_parses_strictly_and_its_pods_validate(path):
    found = executors(path)
    assert found, f"{path.name}: no kfp-kubernetes settings"
    for name, config in found.items():
        json_format.ParseDict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
        assert set(config) <= KNOWN, f"{path.name} {name}: {sorted(set(config) - KNOWN)} not rendered as pod fields here"
        assert validate_document(as_pod(name, config)) == [], (path.name, name)


def test_gpu_steps_of_the_paper_pipeline_are_on_the_a100_pool():
    path = next(p for p in COMPILED if p.name == "llama-embed-nemotron-8b-full.yaml")
    found = executors(path)
    for name in ("exec-mine", "exec-synthesize", "exec-evaluate-group"):
        pod = as_pod(name, found[name])["spec"]
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"], name


def test_a_broken_executor_is_refused():
    path = next(p for p in COMPILED if p.name == "llama-embed-nemotron-8b-full.yaml")
    config = dict(executors(path)["exec-mine"])
    with pytest.raises(json_format.ParseError, match="nodeSelectors"):
        json_format.ParseDict({**config, "nodeSelectors": config["nodeSelector"]},
                              kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    bad = dict(config, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule",
                                     "tolerationSeconds": "soon"}])
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(bad, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    pod = as_pod("exec-mine", config)
    pod["spec"]["nodeSelector"] = {"cloud.google.com/gke-accelerator": ["nvidia-tesla-a100"]}
    assert validate_document(pod)
