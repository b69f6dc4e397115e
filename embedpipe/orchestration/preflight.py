"""Checks before anything runs: the recipe's files exist, its step options are known (the strict recipe), its S3
and MLflow endpoints answer. Every problem is reported at once, not an hour into the run."""

from __future__ import annotations

import os
from pathlib import Path

from embedpipe import storage, tracking
from embedpipe.recipe import Recipe


class PreflightError(RuntimeError):
    """The recipe cannot run as it is; the message lists every problem."""


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".gguf", ".jsonl", ".json", ".parquet", ".yaml"))


def _check_path(value: str | None, where: str, problems: list[str], must_be_local: bool = False) -> None:
    if not value:
        return
    if storage.is_remote(value):
        if must_be_local:
            problems.append(f"{where}: {value} must be a local path")
        return
    if not Path(os.path.expanduser(value)).exists():
        problems.append(f"{where}: {value} does not exist")


def check_recipe(recipe: Recipe, runner: str = "local", check_endpoints: bool = True) -> list[str]:
    """Every problem found (empty when the recipe can run)."""
    from embedpipe.assets import SMOLLM2, resolve_model  # (not encoder.convert: pre-flight needs no torch)

    problems: list[str] = []
    for i, source in enumerate(recipe.data.sources):
        if source.kind in ("beir", "jsonl", "parquet") and not source.path:
            problems.append(f"data.sources[{i}] ({source.name}): kind {source.kind} needs a path")
        if source.kind in ("beir", "jsonl", "parquet", "synthetic"):
            _check_path(source.path, f"data.sources[{i}] ({source.name}).path", problems)
    for i, task in enumerate(recipe.evaluation.local_tasks):
        _check_path(task.path, f"evaluation.local_tasks[{i}] ({task.name}).path", problems)
    _check_path(recipe.evaluation.reference_results, "evaluation.reference_results", problems)
    if recipe.training.backend == "deepspeed":
        _check_path(recipe.training.deepspeed_config, "training.deepspeed_config", problems)
    base = recipe.model.base
    if not recipe.model.random_init and base != SMOLLM2:
        if _looks_like_path(base) or Path(base).exists():
            _check_path(base, "model.base", problems)
        elif runner == "local" and not storage.is_remote(base):
            problems.append(f"model.base: {base!r} is neither {SMOLLM2!r} nor an existing folder or .gguf file; "
                            "hub models cannot be downloaded on this machine")
    for i, teacher in enumerate(recipe.mining.teachers):
        model = resolve_model(teacher.model)
        if _looks_like_path(model):
            _check_path(model, f"mining.teachers[{i}].model", problems)
    # stage-2 variants, ablation cells, sdg.second_step_generator and merge weights are checked when the recipe
    # loads (their models' validators), so a recipe that reaches pre-flight already has them right
    if runner == "kfp" and recipe.training.nodes > 1 and not storage.is_remote(recipe.pipeline.artifact_root):
        problems.append("pipeline.artifact_root: multi-node training needs an s3:// artifact root")
    if check_endpoints:
        problems += check_endpoints_of(recipe)
    return problems


def check_endpoints_of(recipe: Recipe) -> list[str]:
    problems = []
    root = recipe.pipeline.artifact_root
    sources = [(i, s) for i, s in enumerate(recipe.data.sources) if s.path and storage.is_remote(s.path)]
    if storage.is_remote(root) or sources:
        storage.configure(recipe.pipeline.s3_endpoint, recipe.pipeline.s3_secure)
        reachable = True
        if storage.is_remote(root):
            try:  # the artifact root's bucket may be created; inputs must already be there
                storage.check_endpoint(root)
            except storage.StorageError as err:
                problems.append(str(err))
                reachable = False  # one message for a dead endpoint, not one per source
        for i, source in sources if reachable else []:
            try:
                storage.check_source(source.path)
            except storage.StorageError as err:
                problems.append(f"data.sources[{i}] ({source.name}).path: {err}")
    try:
        tracking.check_tracking_uri(recipe.pipeline.mlflow_tracking_uri)
    except tracking.TrackingError as err:
        problems.append(str(err))
    return problems


def preflight(recipe: Recipe, runner: str = "local", check_endpoints: bool = True) -> None:
    problems = check_recipe(recipe, runner, check_endpoints)
    if problems:
        raise PreflightError(f"recipe {recipe.name!r} cannot run ({len(problems)} problem"
                             f"{'s' if len(problems) > 1 else ''}):\n  - " + "\n  - ".join(problems))
