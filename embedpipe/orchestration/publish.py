"""The pipelines' last step: publish the merged model, record the run in MLflow (parent + child runs), register the
model, and render the KServe manifest. Never cached: every pipeline run gets its MLflow run."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import yaml

from embedpipe import storage, tracking
from embedpipe.orchestration import steps
from embedpipe.recipe import Recipe

log = logging.getLogger(__name__)


TRAINING_SUMMARY = "training_summary.json"  # what embedpipe.training.run.train_stage writes beside its export


def loss_history(summary: dict, model_dir: str | None = None) -> list[dict]:
    """A training stage's per-step history (``[{"step", "loss", "lr", ...}]``), as training writes it: the
    summary's ``history``, or, when the summary given has none, the ``training_summary.json`` beside the export."""
    history = summary.get("history")
    if history is None and model_dir:
        path = Path(model_dir) / TRAINING_SUMMARY
        if path.is_file():
            history = json.loads(path.read_text()).get("history")
    return [h for h in history or [] if "loss" in h and "step" in h]


def service_name(recipe: Recipe) -> str:
    """A DNS-1123 name for the InferenceService."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"embedpipe-{recipe.name}".lower()).strip("-")
    return name[:63].rstrip("-")


def _setup(recipe: Recipe) -> None:
    storage.configure(recipe.pipeline.s3_endpoint, recipe.pipeline.s3_secure)
    tracking.setup(recipe.pipeline.mlflow_tracking_uri)


def open_run(recipe: Recipe, pipeline: str, kfp_run_id: str, run_name: str = "", kfp_run_name: str = "") -> str:
    """The pipeline's first step: open its MLflow parent run (see tracking.open_pipeline_run); returns its id."""
    _setup(recipe)
    run_id = tracking.open_pipeline_run(recipe, pipeline, kfp_run_id, run_name=run_name, kfp_run_name=kfp_run_name)
    log.info("MLflow parent run %s: %s", run_id, _ui_url(recipe, run_id))
    return run_id


def close_run(recipe: Recipe, kfp_run_id: str, state: str, error: str = "") -> dict:
    """The exit handler's step: the parent of KFP run ``kfp_run_id`` if it is still RUNNING (the pipeline ended
    before its tracking step: a step failed, the run was cancelled) ends FAILED, tagged with KFP's ``state`` and
    error; a parent the tracking step ended is left as it is."""
    _setup(recipe)
    run_id = tracking.find_pipeline_run(recipe.experiment_name, kfp_run_id)
    if run_id is None:  # the first step failed before opening it
        return {"parent_run_id": None, "pipeline_state": state}
    status = tracking.run_status(run_id)
    if status != "RUNNING":
        return {"parent_run_id": run_id, "pipeline_state": state, "status": status}
    failed = state != "SUCCEEDED"
    if failed:
        tracking.tag_failure(run_id, f"pipeline {state}: {error}" if error else f"pipeline {state}")
    closed = tracking.close_pipeline_run(run_id, failed=failed)
    log.info("MLflow parent run %s ended %s (pipeline %s)", run_id, closed["status"], state)
    return {"parent_run_id": run_id, "pipeline_state": state, **closed}


def _ui_url(recipe: Recipe, run_id: str) -> str:
    return tracking.ui_url(recipe.pipeline.mlflow_tracking_uri, tracking.experiment_id(recipe.experiment_name), run_id)


def record_training(recipe: Recipe, parent_run_id: str, summary: dict, stage: str, variant: dict | None = None,
                    cell: str | None = None) -> str:
    """A training job's child run gets its summary and loss curve; a job whose step KFP took from its cache (it did
    not train in this run, so no child was opened) gets its child here, from the summary, tagged as cached."""
    import tempfile

    import mlflow

    job = tracking.job_key(stage, variant, cell)
    child = tracking.find_child(parent_run_id, job)
    history = loss_history(summary)
    if child is None:
        tags = {tracking.JOB_TAG: job, tracking.KIND_TAG: "training", tracking.STAGE_TAG: stage,
                tracking.CACHED_TAG: "true"}
        if variant:
            tags[tracking.VARIANT_TAG] = steps.variant_name(variant)
        if cell:
            tags[tracking.CELL_TAG] = cell
        with tracking.recipe_run(recipe, run_name=job.replace("/", " · "), parent_run_id=parent_run_id, tags=tags,
                                 params={f"variant.{k}": v for k, v in (variant or {}).items()}) as run:
            tracking.log_training(summary, history, stage)
        return run.info.run_id
    client = mlflow.MlflowClient()  # the live child: add the files and figures, leave its status and times alone
    run_id = child.info.run_id
    figures = {f"{stage}.{k}": v for k, v in tracking.numeric_metrics(dict(summary)).items()}
    tracking.log_metrics_to(run_id, {k: v for k, v in figures.items() if k not in child.data.metrics})
    client.log_dict(run_id, json.loads(json.dumps(summary, default=str)), f"training/{stage}/summary.json")
    if history:
        with tempfile.TemporaryDirectory() as tmp:
            png = tracking.loss_curve_png(history, Path(tmp) / f"loss-{stage}.png", f"{job} loss")
            client.log_artifact(run_id, str(png), f"training/{stage}")
    return run_id


def record_full_run(recipe: Recipe, run_name: str, data_dir: str, records_dir: str, stage1_summary: dict,
                    stage2_summaries: list[dict], merged_dir: str, merge_summary: dict, results_dir: str,
                    manifest_path: str, parent_run_id: str = "", evaluations: dict[str, dict] | None = None) -> dict:
    """The parent run (opened by the pipeline's first step; without one, opened here) gets the data manifest, scores
    and model; every training job its child run; then the parent ends with the pipeline's duration.

    ``evaluations``: the other models' evaluation summaries (``base``, ``stage1``: the same test tasks; ``dev``: the
    merged model on the dev tasks), logged to the parent here, where the step is never cached: ``base.test_*`` and
    ``stage1.test_*`` beside the merged model's ``test_*``, and the merged ``dev_*`` scores unless the dev step
    logged them already (a cached re-run's new parent gets them from here)."""
    import mlflow

    _setup(recipe)
    parent_run_id = parent_run_id or open_run(recipe, "full", "", run_name)
    tracking.experiment_id(recipe.experiment_name)
    with mlflow.start_run(run_id=parent_run_id) as run:
        run_id = run.info.run_id
        for name, folder in (("data", data_dir), ("mining", records_dir)):
            for file in ("manifest.json", steps.SUMMARY):
                if (Path(folder) / file).is_file():
                    mlflow.log_artifact(str(Path(folder) / file), name)
        record_training(recipe, run_id, stage1_summary, "stage1")
        for summary in stage2_summaries:
            record_training(recipe, run_id, summary, "stage2", variant=summary.get("variant") or {})
        tracking.write_json_artifact(merge_summary, "merge/provenance.json")
        scores = json.loads((Path(results_dir) / "scores.json").read_text())
        tracking.log_scores(scores)
        log_other_evaluations(run_id, evaluations or {})
        mlflow.log_artifacts(results_dir, "evaluation/results")
        model_uri = storage.join(_absolute_root(recipe), recipe.name, run_id, "model")
        storage.publish(merged_dir, model_uri)
        scores_uri = storage.write_json(storage.join(_absolute_root(recipe), recipe.name, run_id, "scores.json"), scores)
        registration = tracking.log_and_register_model(merged_dir, recipe.pipeline.register_model_name)
        manifest = render_manifest(recipe, model_uri, manifest_path)
        mlflow.log_artifact(manifest_path, "deploy")
        mlflow.set_tags({"embedpipe.model_uri": model_uri})
    closed = tracking.close_pipeline_run(run_id)
    return {"mlflow_run_id": run_id, "mlflow_run_seconds": closed["seconds"], "mlflow_url": _ui_url(recipe, run_id), "experiment": recipe.experiment_name, "tracking_uri": mlflow.get_tracking_uri(),
            "model_uri": model_uri, "scores_uri": scores_uri, "scores": _headline(scores), **registration,
            "manifest": manifest_path, "inference_service": manifest.get("metadata", {}).get("name")}


def log_other_evaluations(run_id: str, evaluations: dict[str, dict]) -> dict[str, float]:
    """The base / stage-1 (test tasks) and merged dev scores into the parent run (:func:`record_full_run`)."""
    import mlflow

    from embedpipe.evaluation.run import role_metrics

    logged = mlflow.get_run(run_id).data.metrics
    metrics: dict[str, float] = {}
    for which, summary in evaluations.items():
        if not summary:
            continue
        if which == "dev":
            metrics.update({k: v for k, v in role_metrics(summary).items() if k not in logged})
        else:
            metrics.update({f"{which}.{k}": v for k, v in role_metrics(summary).items()})
    tracking.log_metrics_to(run_id, metrics)
    return metrics


def record_ablation(recipe: Recipe, run_name: str, plan: dict, reports: list[dict], parent_run_id: str = "") -> dict:
    """The grid's parent run (opened by the pipeline's first step; without one, here) gets the plan; every training
    job its child (live from the training step; recorded here when KFP took the step from its cache), stage-2 jobs
    with their dev scores; each cell a child run (its recipe as params, its axes as ``ablation.*``, its dev scores as
    ``dev_*``; a merged cell also ``dev_best_single_mean_task`` and ``dev_merge_gain``); then the parent ends."""
    import mlflow

    from embedpipe.evaluation.run import role_metrics
    from embedpipe.orchestration.ablation import cell_results

    _setup(recipe)
    parent_run_id = parent_run_id or open_run(recipe, "ablation", "", run_name or "ablation")
    recipe_json = recipe.model_dump_json()
    by_group = {r["group"]: r for r in reports}
    units = {u["key"]: u for u in plan["stage1"]}
    # a training job's axes: those of the cells it serves, but the merge set (a group serves several)
    axes = {c["group"]: {f"ablation.{k}": v for k, v in c["axes"].items() if k != "merge_set"} for c in plan["cells"]}
    client = mlflow.MlflowClient()
    cells = []
    with mlflow.start_run(run_id=parent_run_id) as run:
        tracking.write_json_artifact(plan, "ablation/plan.json")
        tracking.log_metrics({"ablation.cells": len(plan["cells"]), "ablation.stage1_trainings": len(plan["stage1"]),
                              "ablation.stage2_trainings": sum(len(g["variants"]) for g in plan["stage2"])})
        recorded_stage1 = set()
        for group in plan["stage2"]:
            report = by_group[group["key"]]
            unit = units[group["stage1"]]
            if unit["key"] not in recorded_stage1:
                recorded_stage1.add(unit["key"])
                child = record_training(steps.recipe_from_json(recipe_json, json.dumps(unit["overrides"])),
                                        run.info.run_id, report["stage1"], "stage1", cell=unit["name"])
                _add_params(client, child, axes[group["key"]])
            group_recipe = steps.recipe_from_json(recipe_json, json.dumps(group["overrides"]))
            for variant in report["variants"]:
                spec = variant["training"].get("variant") or {}
                child = record_training(group_recipe, run.info.run_id, variant["training"], "stage2", variant=spec,
                                        cell=group["name"])
                _add_params(client, child, axes[group["key"]])
                logged = client.get_run(child).data.metrics
                dev = role_metrics(variant["dev"])
                if any(k not in logged for k in dev):  # the dev step logs them live; a cached one did not
                    client.log_batch(child, metrics=_metrics(dev))
        for result in cell_results(plan, reports):
            cell = result["cell"]
            cell_recipe = steps.recipe_from_json(recipe_json, json.dumps(cell["overrides"]))
            with tracking.recipe_run(cell_recipe, run_name=cell["name"], parent_run_id=run.info.run_id,
                                     tags={"embedpipe.pipeline": "ablation", tracking.KIND_TAG: "cell",
                                           tracking.CELL_TAG: cell["name"], "embedpipe.group": cell["group"]},
                                     params={f"ablation.{k}": v for k, v in cell["axes"].items()}) as child:
                metrics = role_metrics(result["dev"])
                singles = [v["dev"]["mean_task"] for v in result["variants"]]
                if cell["merged"]:
                    metrics["dev_best_single_mean_task"] = max(singles)
                    metrics["dev_merge_gain"] = result["dev"]["mean_task"] - max(singles)
                    tracking.write_json_artifact(result["merge"], "merge/provenance.json")
                tracking.log_metrics(metrics)
                cells.append({"run_id": child.info.run_id, "name": cell["name"], "axes": cell["axes"],
                              "dev_mean_task": result["dev"].get("mean_task")})
    closed = tracking.close_pipeline_run(run.info.run_id)
    return {"mlflow_run_id": run.info.run_id, "mlflow_run_seconds": closed["seconds"],
            "mlflow_url": _ui_url(recipe, run.info.run_id), "experiment": recipe.experiment_name,
            "tracking_uri": mlflow.get_tracking_uri(), "children": cells}


def _add_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    missing = [Param(k, str(v)) for k, v in params.items() if k not in have]
    if missing:
        client.log_batch(run_id, params=missing)


def _metrics(values: dict[str, float]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]


def _headline(scores: dict) -> dict:
    return {k: scores[k] for k in ("mean_task", "mean_task_type", "borda") if k in scores}


def _absolute_root(recipe: Recipe) -> str:
    root = recipe.pipeline.artifact_root
    return root if storage.is_remote(root) else str(Path(root).resolve())


PVC_CLAIM = "embedpipe-models"


def serving_uri(recipe: Recipe, model_uri: str) -> str:
    """Where KServe reads the model: the s3:// URI, or for a local artifact root the same path on the
    ``embedpipe-models`` PVC (copy the folder there before applying the manifest)."""
    if storage.is_remote(model_uri):
        return model_uri.replace("minio://", "s3://", 1)
    rel = Path(model_uri).relative_to(_absolute_root(recipe)).as_posix()
    return f"pvc://{PVC_CLAIM}/{rel}"


def render_manifest(recipe: Recipe, model_uri: str, out_path: str) -> dict:
    """The KServe InferenceService for the merged model (embedpipe.deploy.kserve), written as YAML: vLLM on the
    GPU pool for cluster recipes, the CPU embedpipe runtime for local ones."""
    from embedpipe.deploy.kserve import render_inference_service

    if recipe.pipeline.runner == "kfp":
        manifest = render_inference_service(service_name(recipe), serving_uri(recipe, model_uri), runtime="vllm",
                                            gpus=1, node_selector=recipe.pipeline.gpu_node_selector,
                                            gpu_resource=recipe.pipeline.gpu_accelerator)
    else:
        manifest = render_inference_service(service_name(recipe), serving_uri(recipe, model_uri), runtime="embedpipe",
                                            gpus=0, cpu="2", memory="4Gi")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return manifest
