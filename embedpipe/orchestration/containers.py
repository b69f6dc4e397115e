"""``embedpipe run --runner docker``: kfp.local's DockerRunner, every step in its role's image.

The engine is whatever ``DOCKER_HOST`` (or the default socket) answers: Docker, or podman's Docker-compatible
service (``bash scripts/podman_setup.sh --service``). Two things kfp.local's Docker task handler does not do, done
here by replacing its ``run_docker_container`` for the duration of the run (kfp's own tests patch the same handler):

- it starts containers with ``auto_remove=True``, then inspects them: a container that exits at once is already
  gone, and podman answers that inspect with 500 "no such container" (Docker with 404, which kfp catches, then
  *assumes* exit code 0). Here the container is kept until its exit code is read, then removed: a step that fails
  fast is reported as failed on either engine.
- it mounts only KFP's pipeline root; the steps also read and write the recipe's local artifact root, the MLflow
  store and local data files, so those folders are mounted at the same paths.

Containers run as the image's non-root user unless ``user`` is given; the mounted folders are made writable for it.
Before a run, :func:`image_problems` refuses images that are missing or were built from other embedpipe source than
the checkout (their ``org.embedpipe.source-digest`` label, see images.source_digest).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from embedpipe.orchestration.images import (
    DEFAULT_REGISTRY,
    DEFAULT_TAG,
    ROLES,
    SOURCE_LABEL,
    checkout_root,
    image,
    source_digest,
)


def engine_error(err: Exception) -> str:
    host = os.environ.get("DOCKER_HOST", "the default Docker socket")
    return (f"no container engine at {host}: {err}. Start Docker, or podman's service with "
            f"`bash scripts/podman_setup.sh --service` and export the DOCKER_HOST it prints")


def missing_images(client, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG) -> list[str]:
    """The role images the pipeline needs that the engine does not have (build them: scripts/build_images.sh)."""
    have = {t for img in client.images.list() for t in img.tags}
    return [image(role, registry, tag) for role in ROLES if role != "serve" and image(role, registry, tag) not in have]


def stale_images(client, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG, root=None) -> list[str]:
    """One line per role image the pipeline needs whose source-digest label is not ``root``'s (default: the checkout
    embedpipe is imported from; nothing to compare when it is installed from a wheel). An unlabelled image counts as
    stale: nothing says which source it holds."""
    root = root or checkout_root()
    if root is None:
        return []
    want = source_digest(root)
    out = []
    for role in ROLES:
        if role == "serve":
            continue
        name = image(role, registry, tag)
        have = (client.images.get(name).labels or {}).get(SOURCE_LABEL) or ""
        if have != want:
            out.append(f"{name} (built from source {have[:12] or 'of unknown digest'})")
    return out


def image_problems(client, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG, root=None) -> str | None:
    """Why the engine's role images cannot run this checkout's steps (missing, or built from other source), with
    how to rebuild; None when they can. EMBEDPIPE_ALLOW_STALE_IMAGES=1 skips the source comparison."""
    rebuild = f"`REGISTRY={registry} TAG={tag} bash scripts/build_images.sh`"
    missing = missing_images(client, registry, tag)
    if missing:
        return f"the container engine lacks {', '.join(missing)}: build them with {rebuild}"
    if os.environ.get("EMBEDPIPE_ALLOW_STALE_IMAGES") == "1":
        return None
    stale = stale_images(client, registry, tag, root)
    if stale:
        root = root or checkout_root()
        return (f"images built from an older embedpipe source than this checkout ({root}, source "
                f"{source_digest(root)[:12]}): {'; '.join(stale)}. Rebuild them with {rebuild} (only the source "
                f"layer is rebuilt), or set EMBEDPIPE_ALLOW_STALE_IMAGES=1 to run the old code anyway")
    return None


def run_container(client, image_name: str, command: list[str], volumes: dict, **run_args) -> int:
    """Run ``command`` in ``image_name`` to the end, streaming its output; the exit code (the container is removed
    after it has been read)."""
    run_args.pop("auto_remove", None)
    container = client.containers.create(image=image_name, command=command, volumes=volumes, **run_args)
    try:
        container.start()
        for line in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@contextlib.contextmanager
def docker_steps(mounts: list[Path], registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG) -> Iterator[None]:
    """While active, kfp.local's DockerRunner runs each step with :func:`run_container`, ``mounts`` bound at the same
    paths, and the components' default image names mapped to ``registry``/``tag``."""
    from kfp.local import docker_task_handler

    names = {image(role): image(role, registry, tag) for role in ROLES}
    extra = {str(p): {"bind": str(p), "mode": "rw"} for p in dict.fromkeys(Path(m).resolve() for m in mounts)}

    def run_docker_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
        wanted = docker_task_handler.add_latest_tag_if_not_present(names.get(image, image))
        return run_container(client, wanted, command, {**extra, **volumes}, **run_args)

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_docker_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def writable(folder: Path) -> None:
    """Let the images' non-root user write the mounted folders (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(PermissionError):
                path.chmod(path.stat().st_mode | 0o777)
        elif path.is_file():
            with contextlib.suppress(PermissionError):
                path.chmod(path.stat().st_mode | 0o666)
