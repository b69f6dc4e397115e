"""``embedpipe run``: the pipeline definition, run on this machine with kfp.local (SubprocessRunner, no Docker).

Artifacts go under ``pipeline.artifact_root`` (a local folder; with an s3:// root the KFP work folder stays local
and the finished model and scores are published to S3), MLflow to ``pipeline.mlflow_tracking_uri``. KFP's local
cache (content-keyed on each step's inputs) makes a re-run with the same inputs skip the finished steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from embedpipe import storage, tracking
from embedpipe.orchestration.preflight import preflight
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


def run_local(recipe: Recipe, pipeline: str = "full", run_name: str = "", base: Path | None = None,
              cache: bool = True, check_endpoints: bool = True) -> dict:
    """Pre-flight, then run ``pipeline`` with kfp.local; returns the last step's summary plus timings."""
    from kfp import local

    from embedpipe.orchestration.compile import pipeline_function

    base = Path(base or os.getcwd()).resolve()
    recipe = localize(recipe, base)
    preflight(recipe, runner="local", check_endpoints=check_endpoints)
    storage.configure(recipe.pipeline.s3_endpoint, recipe.pipeline.s3_secure)
    root = work_root(recipe, base)
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=cache, cache_root=str(root / ".cache"))
    func = pipeline_function(pipeline, recipe, local=True)
    started = time.perf_counter()
    task = func(recipe_json=recipe.model_dump_json(), run_name=run_name or "")
    seconds = time.perf_counter() - started
    summary = json.loads(task.outputs["Output"] if hasattr(task, "outputs") and isinstance(task.outputs, dict)
                         else task.output)
    return {**summary, "pipeline": pipeline, "seconds": round(seconds, 2), "work_root": str(root),
            "tracking_uri": recipe.pipeline.mlflow_tracking_uri}
