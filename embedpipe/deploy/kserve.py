"""KServe manifests for the merged encoder: an InferenceService (storageUri ``s3://``) on one of two runtimes.

``vllm`` (the default on GPUs): vLLM's OpenAI server with the pooling runner (``--runner pooling --convert embed``).
vLLM has the ``LlamaBidirectionalModel`` architecture in its registry and its config hook sets ``is_causal=False``
and the pooling type from ``config.pooling`` -- but it only knows ``avg``/``cls``/``last``, and an embedpipe export
says ``mean``, so the runtime passes ``--hf-overrides`` (see :func:`vllm_hf_overrides`). Continuous batching and
bf16 kernels make it the throughput choice on A100s. vLLM embeds texts as sent: clients format queries as
``Instruct: ...\\nQuery: ...`` themselves.

``embedpipe``: the project's own server image (``embedpipe serve /mnt/models``), the exact ``Encoder`` code path
(bidirectional mask, mean pooling, L2), with server-side instructions (``input_type``/``instruction``). It runs on
CPU too, so the local overlay uses it. KServe's Hugging Face runtime (``--task text_embedding --backend
huggingface``) would also honour the export (AutoModel + ``trust_remote_code`` loads our modeling file; it mean-pools
and normalises), but its default backend is vLLM anyway and it adds nothing over the two above.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from embedpipe.orchestration.config import GPU_NODE_SELECTOR
from embedpipe.orchestration.images import DEFAULT_REGISTRY, DEFAULT_TAG, image

API_VERSION = "serving.kserve.io/v1beta1"
RUNTIME_API_VERSION = "serving.kserve.io/v1alpha1"
MODEL_FORMAT = "embedpipe-encoder"
VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
RUNTIMES = {"vllm": "embedpipe-vllm-embed", "embedpipe": "embedpipe-serve"}
MODEL_READER_SA = "embedpipe-model-reader"
DEFAULT_NODE_SELECTOR = GPU_NODE_SELECTOR
# vLLM's LlamaBidirectionalConfig maps these config.pooling values; embedpipe writes "mean"
VLLM_POOLING = {"mean": "avg", "avg": "avg", "cls": "cls", "last": "last"}
# the export mean-pools and L2-normalises (embedpipe.encoder); vLLM's pooler must do the same
VLLM_POOLER_CONFIG = {"pooling_type": "MEAN", "normalize": True}
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Runtime = Literal["vllm", "embedpipe"]


def check_name(name: str) -> str:
    """KServe names become DNS labels (and host names): lowercase alphanumerics and '-', at most 63 characters."""
    if not _NAME.match(name) or len(name) > 63:
        raise ValueError(f"invalid InferenceService name {name!r}: use lowercase letters, digits and '-', "
                         "starting with a letter, at most 63 characters")
    return name


def check_storage_uri(uri: str) -> str:
    if not re.match(r"^(s3|gs|pvc|hf|https?)://.+", uri):
        raise ValueError(f"storage URI {uri!r} is not one KServe's storage initializer reads "
                         "(s3://bucket/path, gs://, pvc://claim/path, hf://org/model, https://)")
    return uri


def vllm_hf_overrides(model_config: dict | str | Path | None = None) -> dict:
    """The ``--hf-overrides`` vLLM needs for an embedpipe export: pooling name and non-causal attention.

    ``model_config`` is a config.json dict or an export folder; without it, the values every export has.
    """
    if isinstance(model_config, (str, Path)):
        model_config = json.loads((Path(model_config) / "config.json").read_text())
    config = model_config or {"pooling": "mean", "architectures": ["LlamaBidirectionalModel"]}
    architectures = config.get("architectures") or []
    if "LlamaBidirectionalModel" not in architectures:
        raise ValueError(f"vLLM embeds this export bidirectionally only under the LlamaBidirectionalModel "
                         f"architecture; config.json says {architectures}")
    pooling = config.get("pooling", "mean")
    if pooling not in VLLM_POOLING:
        raise ValueError(f"pooling {pooling!r} has no vLLM equivalent (known: {', '.join(VLLM_POOLING)})")
    return {"pooling": VLLM_POOLING[pooling], "is_causal": False}


def render_serving_runtime(runtime: Runtime = "vllm", image_registry: str = DEFAULT_REGISTRY,
                           image_tag: str = DEFAULT_TAG, vllm_image: str = VLLM_IMAGE,
                           max_model_len: int = 4096) -> dict:
    """A namespaced ServingRuntime (no cluster-wide rights needed) serving ``/v1/embeddings`` on port 8080."""
    if runtime == "vllm":
        container = {
            "name": "kserve-container",
            "image": vllm_image,
            "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
            "args": [
                "--model=/mnt/models", "--served-model-name={{.Name}}", "--port=8080",
                "--runner=pooling", "--convert=embed", "--trust-remote-code", "--dtype=bfloat16",
                f"--max-model-len={max_model_len}",
                "--hf-overrides=" + json.dumps(vllm_hf_overrides(), separators=(",", ":")),
                "--pooler-config=" + json.dumps(VLLM_POOLER_CONFIG, separators=(",", ":")),
            ],
            "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "VLLM_NO_USAGE_STATS", "value": "1"}],
            # the vllm/vllm-openai image has no USER directive: it runs as root, and torch's compile cache calls
            # getpass.getuser() at import, which fails for a UID not in /etc/passwd (kserve#5666). So no
            # runAsNonRoot here: the container keeps the image's own user, without privilege escalation or
            # capabilities. A restricted namespace needs a non-root vLLM build (vllm's vllm-openai-nonroot target).
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        }
        annotations = {"embedpipe.io/why": "vLLM pooling runner: LlamaBidirectionalModel with is_causal=False, "
                                           "mean pooling, continuous batching"}
    elif runtime == "embedpipe":
        container = {
            "name": "kserve-container",
            "image": image("serve", image_registry, image_tag),
            "args": ["serve", "/mnt/models", "--host=0.0.0.0", "--port=8080", "--model-name={{.Name}}"],
            "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        }
        annotations = {"embedpipe.io/why": "the project's Encoder code path; server-side instructions; CPU or GPU"}
    else:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of: {', '.join(RUNTIMES)}")
    container["ports"] = [{"containerPort": 8080, "protocol": "TCP"}]
    container["readinessProbe"] = {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10,
                                   "failureThreshold": 3}
    container.setdefault("securityContext", {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                             "capabilities": {"drop": ["ALL"]}})  # our own image: USER embedpipe
    return {
        "apiVersion": RUNTIME_API_VERSION,
        "kind": "ServingRuntime",
        "metadata": {"name": RUNTIMES[runtime], "annotations": annotations,
                     "labels": {"app.kubernetes.io/part-of": "embedpipe"}},
        "spec": {
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": True}],
            "protocolVersions": ["v1"],
            "containers": [container],
            # vLLM's workers talk through shared memory; a pod's default /dev/shm is 64 MiB
            **({"volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]}
               if runtime == "vllm" else {}),
        },
    }


def render_inference_service(
    name: str,
    storage_uri: str,
    namespace: str | None = "embedpipe",
    runtime: Runtime = "vllm",
    gpus: int = 1,
    min_replicas: int = 1,
    max_replicas: int = 4,
    scale_metric: Literal["concurrency", "rps"] = "concurrency",
    scale_target: int = 32,
    node_selector: dict[str, str] | None = None,
    gpu_resource: str = "nvidia.com/gpu",
    cpu: str = "4",
    memory: str = "32Gi",
    service_account: str = MODEL_READER_SA,
    labels: dict[str, str] | None = None,
) -> dict:
    """The InferenceService for an encoder export at ``storage_uri``; ``gpus=0`` renders a CPU deployment."""
    check_name(name)
    check_storage_uri(storage_uri)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of: {', '.join(RUNTIMES)}")
    if runtime == "vllm" and gpus < 1:
        raise ValueError("the vllm runtime needs a GPU (gpus >= 1); use runtime='embedpipe' on CPU")
    if not 0 <= min_replicas <= max_replicas or max_replicas < 1:
        raise ValueError(f"replicas must satisfy 0 <= min ({min_replicas}) <= max ({max_replicas}), max >= 1")
    requests = {"cpu": cpu, "memory": memory}
    limits = {"cpu": cpu, "memory": memory}
    predictor: dict = {
        "serviceAccountName": service_account,
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "scaleMetric": scale_metric,
        "scaleTarget": scale_target,
        "labels": {"embedpipe.io/s3-access": "true", **(labels or {})},
        "model": {
            "modelFormat": {"name": MODEL_FORMAT, "version": "1"},
            "runtime": RUNTIMES[runtime],
            "storageUri": storage_uri,
            "resources": {"requests": requests, "limits": limits},
        },
    }
    if gpus:
        requests[gpu_resource] = str(gpus)
        limits[gpu_resource] = str(gpus)
        predictor["nodeSelector"] = dict(node_selector if node_selector is not None else DEFAULT_NODE_SELECTOR)
        predictor["tolerations"] = [{"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    metadata: dict = {"name": name, "labels": {"app.kubernetes.io/part-of": "embedpipe",
                                                "app.kubernetes.io/component": "embedder"},
                      "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": predictor}}


def embeddings_url(name: str, namespace: str = "embedpipe") -> str:
    """The in-cluster URL of ``/v1/embeddings`` for a RawDeployment InferenceService."""
    return f"http://{name}-predictor.{namespace}.svc.cluster.local/v1/embeddings"
