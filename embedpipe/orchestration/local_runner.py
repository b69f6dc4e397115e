"""``embedpipe run``: the pipeline definition, run on this machine with kfp.local: in this process's environment
(SubprocessRunner, ``runner="local"``) or each step in its role's image (DockerRunner, ``runner="docker"``: see
embedpipe/orchestration/containers.py).

Artifacts go under ``pipeline.artifact_root`` (a local folder; with an s3:// root the KFP work folder stays local
and the finished model and scores are published to S3), MLflow to ``pipeline.mlflow_tracking_uri``. KFP's local
cache (content-keyed on each step's inputs) makes a re-run with the same inputs skip the finished steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from embedpipe import storage, tracking
from embedpipe.orchestration.preflight import preflight
from embedpipe.orchestration.progress import Step, StepFailed, StepWatcher
from embedpipe.recipe import Recipe


def localize(recipe: Recipe, base: Path) -> Recipe:
    """Relative local paths made absolute (the steps run as subprocesses, maybe elsewhere)."""
    pipeline = recipe.pipeline
    updates = {"mlflow_tracking_uri": tracking.resolve_tracking_uri(pipeline.mlflow_tracking_uri, base)}
    if not storage.is_remote(pipeline.artifact_root):
        updates["artifact_root"] = str((base / pipeline.artifact_root).resolve())
    return recipe.model_copy(update={"pipeline": pipeline.model_copy(update=updates)})


def work_root(recipe: Recipe, base: Path) -> Path:
    """KFP's local pipeline root: the artifact root when local, else a local work folder."""
    root = recipe.pipeline.artifact_root
    return Path(root) / "kfp" if not storage.is_remote(root) else (base / ".embedpipe" / "kfp").resolve()


def run_local(recipe: Recipe, pipeline, run_name: str = "", base: Path | None = None,
              cache: bool = True, check_endpoints: bool = True, runner: str = "local",
              on_step: Callable[[Step, list[Step]], None] | None = None, echo: TextIO | None = None) -> dict:
    """Pre-flight, then run ``pipeline`` (a builder from ``embedpipe.pipelines.PIPELINES``) with kfp.local;
    returns the last step's summary plus timings and ``steps`` (every step's state, time, key figure, summary and
    log file). Each step's output goes to its own log file under the run's work folder (``logs``), and to ``echo``
    as well when given; ``on_step`` is called at every state change. A failed step raises StepFailed naming it
    and its log file."""
    from google.protobuf import json_format
    from kfp import local

    from embedpipe.orchestration.compile import pipeline_function, pipeline_kind

    base = Path(base or os.getcwd()).resolve()
    recipe = localize(recipe, base)
    preflight(recipe, runner="local", check_endpoints=check_endpoints)
    storage.configure(recipe.pipeline.s3_endpoint, recipe.pipeline.s3_secure)
    root = work_root(recipe, base)
    root.mkdir(parents=True, exist_ok=True)
    steps = contextlib.nullcontext()
    if runner == "docker":
        kfp_runner, steps = _docker(recipe, base, root)
    elif runner == "local":
        kfp_runner = local.SubprocessRunner(use_venv=False)
    else:
        raise ValueError(f"runner {runner!r}: one of 'local' (this environment) or 'docker' (the role images)")
    local.init(runner=kfp_runner, pipeline_root=str(root), raise_on_error=True,
               enable_caching=cache, cache_root=str(root / ".cache"))
    func = pipeline_function(pipeline, recipe, local=True)
    watcher = StepWatcher(json_format.MessageToDict(func.pipeline_spec), root, on_change=on_step, echo=echo)
    started, started_ms = time.perf_counter(), int(time.time() * 1000)
    try:
        with steps, watcher:
            func(recipe_json=recipe.model_dump_json(), run_name=run_name or "")
    except BaseException as err:  # the exit handler ended the parent FAILED: name the failed step on it (and end it
        # here if the exit step died too)
        failed = watcher.failed()
        named = StepFailed(failed[0], str(err).splitlines()[0]) if isinstance(err, RuntimeError) and failed else None
        _fail_parent_run(recipe, started_ms, named or err)
        if named is not None:
            raise named from None
        raise
    seconds = time.perf_counter() - started
    kind = pipeline_kind(func)
    # the run's result is its tracking step's summary (a pipeline returns no output: its steps run inside an exit
    # handler, and KFP takes pipeline outputs from the top level only)
    tracked = watcher.output_of(f"comp-track-{kind}")
    if tracked is None:
        raise RuntimeError(f"the {kind} pipeline ended without its tracking step's output")
    summary = json.loads(tracked) if isinstance(tracked, str) else tracked
    return {**summary, "pipeline": kind, "seconds": round(seconds, 2), "work_root": str(root),
            "tracking_uri": recipe.pipeline.mlflow_tracking_uri, "runner": runner,
            "logs": str(watcher.run_folder / "logs") if watcher.run_folder else None,
            "steps": [step.to_dict() for step in watcher.steps]}


def _fail_parent_run(recipe: Recipe, started_ms: int, err: BaseException) -> None:
    try:
        tracking.setup(recipe.pipeline.mlflow_tracking_uri)
        tracking.fail_pipeline_runs_since(recipe.experiment_name, started_ms, f"{type(err).__name__}: {err}")
    except Exception as close_err:  # noqa: BLE001 - the pipeline's own error is the one to raise
        import logging

        logging.getLogger(__name__).warning("could not end the MLflow parent run FAILED: %s", close_err)


def _docker(recipe: Recipe, base: Path, root: Path):
    """kfp.local's DockerRunner over the engine at DOCKER_HOST, as the caller's user (artifacts on the host are
    theirs), with the working folder, artifact root and MLflow store mounted at the same paths."""
    import docker
    from kfp import local

    from embedpipe.orchestration import containers

    pipeline = recipe.pipeline
    try:
        client = docker.from_env()
        problem = containers.image_problems(client, pipeline.image_registry, pipeline.image_tag)
        client.close()
    except docker.errors.DockerException as err:
        raise RuntimeError(containers.engine_error(err)) from None
    if problem:  # missing, or built from older source than this checkout
        raise RuntimeError(problem)
    mounts = [base, root]
    if not storage.is_remote(pipeline.artifact_root):
        mounts.append(Path(pipeline.artifact_root))
    uri = pipeline.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        mounts.append(Path(uri[len("sqlite:///"):]).parent)
    elif "://" not in uri or uri.startswith("file://"):
        mounts.append(Path(uri.removeprefix("file://")))
    for folder in mounts:
        folder.mkdir(parents=True, exist_ok=True)
    kfp_runner = local.DockerRunner(user=f"{os.getuid()}:{os.getgid()}", network_mode="host")
    return kfp_runner, containers.docker_steps(mounts, pipeline.image_registry, pipeline.image_tag)
