"""Container images of the components: ``{registry}/embedpipe-{role}:{tag}`` (built from docker/).

Roles: ``base`` (data build, merge, tracking, job launchers), ``sdg`` (vLLM for synthetic data), ``train`` (torch,
DeepSpeed, faiss: mining and training), ``eval`` (mteb), ``serve`` (the KServe runtime). Components are declared
with the default registry and tag; ``embedpipe compile`` rewrites them to the recipe's ``pipeline.image_registry``
and ``pipeline.image_tag``.
"""

from __future__ import annotations

DEFAULT_REGISTRY = "ghcr.io/embedpipe"
DEFAULT_TAG = "0.1.0"
ROLES = ("base", "sdg", "train", "eval", "serve")


def image(role: str, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown image role {role!r}; one of {ROLES}")
    return f"{registry.rstrip('/')}/embedpipe-{role}:{tag}"


def retarget(ir: dict, registry: str, tag: str) -> dict:
    """Point every executor of a compiled pipeline (IR dict) at ``registry``/``tag``."""
    executors = ir.get("deploymentSpec", {}).get("executors", {})
    for executor in executors.values():
        container = executor.get("container")
        if not container:
            continue
        for role in ROLES:
            if container.get("image") == image(role):
                container["image"] = image(role, registry, tag)
    return ir
