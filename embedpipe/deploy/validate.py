"""Offline validation of Kubernetes manifests: core kinds against the Kubernetes OpenAPI schemas
(``kubernetes-validate``), custom resources against their SDKs' typed models (KServe, Kubeflow Training).

The typed-model check is strict: an unknown key, a wrong type or a missing required field is an error naming its
path (``spec.predictor.model.storageUri``), since the SDKs themselves silently drop unknown keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

K8S_VERSION = "1.32.0"

# (apiVersion, kind) -> (SDK module, model class name); the module is documentation: names resolve across MODEL_MODULES
CUSTOM_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): ("kserve.models", "V1beta1InferenceService"),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): ("kserve.models", "V1alpha1ServingRuntime"),
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): ("kserve.models", "V1alpha1ClusterServingRuntime"),
    ("kubeflow.org/v1", "PyTorchJob"): ("kubeflow.training.models", "KubeflowOrgV1PyTorchJob"),
}
MODEL_MODULES = ("kserve.models", "kubeflow.training.models", "kubernetes.client.models")
_PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "object": (object,),
               "datetime": (str,), "date": (str,)}


class ManifestError(ValueError):
    """A manifest that does not validate; the message names the file, the document and the field."""


def _resolve(name: str):
    import importlib

    for module in MODEL_MODULES:
        mod = importlib.import_module(module)
        if hasattr(mod, name):
            return getattr(mod, name)
    raise ManifestError(f"no typed model named {name}")


def check_typed(value, type_name: str, path: str = "") -> list[str]:
    """Problems of ``value`` against an OpenAPI-generated model type (``V1Container``, ``list[...]``...)."""
    problems: list[str] = []
    list_match = re.fullmatch(r"list\[(.+)\]", type_name)
    dict_match = re.fullmatch(r"dict\((\w+), (.+)\)", type_name)
    if list_match:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        for i, item in enumerate(value):
            problems += check_typed(item, list_match.group(1), f"{path}[{i}]")
    elif dict_match:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        for key, item in value.items():
            problems += check_typed(item, dict_match.group(2), f"{path}.{key}")
    elif type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name]) and not (type_name in ("int", "float") and isinstance(value, bool))
        if not ok:
            problems.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
    else:
        cls = _resolve(type_name)
        if not isinstance(value, dict):
            return [f"{path}: expected a {type_name} mapping, got {type(value).__name__}"]
        by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
        present = {}
        for key, item in value.items():
            if key not in by_json:
                problems.append(f"{path}.{key}: unknown field for {type_name}" if path else f"{key}: unknown field")
                continue
            if item is None:
                continue
            present[by_json[key]] = item
            problems += check_typed(item, cls.openapi_types[by_json[key]], f"{path}.{key}" if path else key)
        try:  # the generated constructors check required fields and enumerated values
            cls(**present)
        except (ValueError, TypeError) as err:
            problems.append(f"{path or type_name}: {err}")
    return problems


def validate_document(doc: dict, k8s_version: str = K8S_VERSION) -> list[str]:
    """All problems of one manifest document (empty when it is valid)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind are required)"]
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_KINDS:
        module, name = CUSTOM_KINDS[key]
        return check_typed(doc, name)
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except SchemaNotFoundError:
        return [f"no schema for {doc['apiVersion']} {doc['kind']} (neither a core kind nor a known custom resource)"]
    except ValidationError as err:
        where = ".".join(str(p) for p in err.path)
        return [f"{where}: {err.message}" if where else err.message]
    return []


def validate_documents(docs: list[dict], source: str = "<manifests>", k8s_version: str = K8S_VERSION) -> int:
    """Validate every document; raise :class:`ManifestError` listing all problems. Returns the count checked."""
    problems = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        name = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}" if isinstance(doc, dict) else "?"
        problems += [f"{source} document {i} ({name}): {p}" for p in validate_document(doc, k8s_version)]
    if problems:
        raise ManifestError("\n".join(problems))
    return sum(1 for d in docs if d is not None)


def validate_file(path: str | Path, k8s_version: str = K8S_VERSION) -> int:
    path = Path(path)
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: invalid YAML: {err}") from None
    return validate_documents(docs, str(path), k8s_version)
