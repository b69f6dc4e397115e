"""Apply rendered custom resources through the kubernetes client, or say there is no cluster to apply to.

Create, and on 409 (it exists) replace at the live resourceVersion; ``dry_run`` asks the API server for a
server-side dry run (``dryRun=All``): admission and validation run, nothing is stored.
"""

from __future__ import annotations

import os
from pathlib import Path

PLURALS = {"InferenceService": "inferenceservices", "ServingRuntime": "servingruntimes",
           "ClusterServingRuntime": "clusterservingruntimes", "PyTorchJob": "pytorchjobs"}
CLUSTER_SCOPED = {"ClusterServingRuntime"}


def find_kubeconfig(kubeconfig: str | Path | None = None) -> str | None:
    """The kubeconfig to use: the given path (must exist), $KUBECONFIG, ~/.kube/config, else None."""
    if kubeconfig is not None:
        if not Path(kubeconfig).is_file():
            raise FileNotFoundError(f"kubeconfig {kubeconfig} does not exist")
        return str(kubeconfig)
    for candidate in [*(os.environ.get("KUBECONFIG", "").split(os.pathsep)), str(Path.home() / ".kube" / "config")]:
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def kube_client(kubeconfig: str | Path | None = None, context: str | None = None):
    """An ApiClient from a kubeconfig or the in-cluster service account; None when neither is there."""
    from kubernetes import client, config

    path = find_kubeconfig(kubeconfig)
    if path is not None:
        return config.new_client_from_config(config_file=path, context=context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    return None


def apply_custom_object(api_client, doc: dict, dry_run: bool = False, field_manager: str = "embedpipe") -> dict:
    """Create or replace one custom resource; returns what the API server answered."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    kind = doc["kind"]
    if kind not in PLURALS:
        raise ValueError(f"cannot apply kind {kind!r}; known: {', '.join(PLURALS)}")
    group, version = doc["apiVersion"].split("/")
    name = doc["metadata"]["name"]
    api = client.CustomObjectsApi(api_client)
    options = {"field_manager": field_manager}
    if dry_run:
        options["dry_run"] = "All"
    if kind in CLUSTER_SCOPED:
        scope: tuple = ()
        create, get, replace = (api.create_cluster_custom_object, api.get_cluster_custom_object,
                                api.replace_cluster_custom_object)
    else:
        namespace = doc["metadata"].get("namespace")
        if not namespace:
            raise ValueError(f"{kind}/{name} has no metadata.namespace")
        scope = (namespace,)
        create, get, replace = (api.create_namespaced_custom_object, api.get_namespaced_custom_object,
                                api.replace_namespaced_custom_object)
    try:
        return create(group, version, *scope, PLURALS[kind], doc, **options)
    except ApiException as err:
        if err.status != 409:
            raise RuntimeError(f"creating {kind}/{name} failed: HTTP {err.status} {err.reason}: {err.body}") from None
    live = get(group, version, *scope, PLURALS[kind], name)
    body = {**doc, "metadata": {**doc["metadata"], "resourceVersion": live["metadata"]["resourceVersion"]}}
    try:
        return replace(group, version, *scope, PLURALS[kind], name, body, **options)
    except ApiException as err:
        raise RuntimeError(f"replacing {kind}/{name} failed: HTTP {err.status} {err.reason}: {err.body}") from None
