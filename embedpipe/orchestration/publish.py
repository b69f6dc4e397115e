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


def record_full_run(recipe: Recipe, run_name: str, data_dir: str, records_dir: str, stage1_summary: dict,
                    stage2_summaries: list[dict], merged_dir: str, merge_summary: dict, results_dir: str,
                    manifest_path: str) -> dict:
    """Parent run (recipe params, data manifest, scores, model) with a child run per stage-2 variant."""
    import mlflow

    _setup(recipe)
    with tracking.recipe_run(recipe, run_name=run_name or None, tags={"embedpipe.pipeline": "full"}) as run:
        run_id = run.info.run_id
        for name, folder in (("data", data_dir), ("mining", records_dir)):
            for file in ("manifest.json", steps.SUMMARY):
                if (Path(folder) / file).is_file():
                    mlflow.log_artifact(str(Path(folder) / file), name)
        tracking.log_training(stage1_summary, loss_history(stage1_summary), "stage1")
        for summary in stage2_summaries:
            variant = summary.get("variant") or {}
            with tracking.recipe_run(recipe, run_name=steps.variant_name(variant), parent_run_id=run_id,
                                     tags={"embedpipe.pipeline": "full", "embedpipe.stage": "stage2"},
                                     params={f"variant.{k}": v for k, v in variant.items()}):
                tracking.log_training(summary, loss_history(summary), "stage2")
        tracking.write_json_artifact(merge_summary, "merge/provenance.json")
        scores = json.loads((Path(results_dir) / "scores.json").read_text())
        tracking.log_scores(scores)
        mlflow.log_artifacts(results_dir, "evaluation/results")
        model_uri = storage.join(_absolute_root(recipe), recipe.name, run_id, "model")
        storage.publish(merged_dir, model_uri)
        scores_uri = storage.write_json(storage.join(_absolute_root(recipe), recipe.name, run_id, "scores.json"), scores)
        registration = tracking.log_and_register_model(merged_dir, recipe.pipeline.register_model_name)
        manifest = render_manifest(recipe, model_uri, manifest_path)
        mlflow.log_artifact(manifest_path, "deploy")
        mlflow.set_tags({"embedpipe.model_uri": model_uri})
    return {"mlflow_run_id": run_id, "experiment": recipe.experiment_name, "tracking_uri": mlflow.get_tracking_uri(),
            "model_uri": model_uri, "scores_uri": scores_uri, "scores": _headline(scores), **registration,
            "manifest": manifest_path, "inference_service": manifest.get("metadata", {}).get("name")}


def record_ablation(recipe: Recipe, run_name: str, plan: dict, reports: list[dict]) -> dict:
    """One parent run for the grid (its plan as an artifact); a child run per cell (the cell's recipe as params, its
    axes as ``ablation.*`` params, its dev scores as ``dev_*`` metrics) and one per stage-2 training (its group's
    recipe and ``variant.*`` params, its training curve, its dev scores)."""
    from embedpipe.evaluation.run import role_metrics
    from embedpipe.orchestration.ablation import cell_results

    _setup(recipe)
    recipe_json = recipe.model_dump_json()
    by_group = {r["group"]: r for r in reports}
    tags = {"embedpipe.pipeline": "ablation"}
    children = []
    with tracking.recipe_run(recipe, run_name=run_name or "ablation", tags=tags) as run:
        tracking.write_json_artifact(plan, "ablation/plan.json")
        tracking.log_metrics({"ablation.cells": len(plan["cells"]), "ablation.stage1_trainings": len(plan["stage1"]),
                              "ablation.stage2_trainings": sum(len(g["variants"]) for g in plan["stage2"])})
        for group in plan["stage2"]:
            group_recipe = steps.recipe_from_json(recipe_json, json.dumps(group["overrides"]))
            for variant in by_group[group["key"]]["variants"]:
                spec = variant["training"].get("variant") or {}
                with tracking.recipe_run(group_recipe, run_name=f"{group['name']}/{steps.variant_name(spec)}",
                                         parent_run_id=run.info.run_id,
                                         tags={**tags, "embedpipe.stage": "stage2", "embedpipe.group": group["key"]},
                                         params={f"variant.{k}": v for k, v in spec.items()}) as child:
                    tracking.log_training(variant["training"], loss_history(variant["training"]), "stage2")
                    tracking.log_metrics(role_metrics(variant["dev"]))
                    children.append({"run_id": child.info.run_id, "kind": "stage2", "group": group["key"],
                                     "variant": steps.variant_name(spec),
                                     "dev_mean_task": variant["dev"].get("mean_task")})
        for result in cell_results(plan, reports):
            cell = result["cell"]
            cell_recipe = steps.recipe_from_json(recipe_json, json.dumps(cell["overrides"]))
            with tracking.recipe_run(cell_recipe, run_name=cell["name"], parent_run_id=run.info.run_id,
                                     tags={**tags, "embedpipe.stage": "cell", "embedpipe.group": cell["group"]},
                                     params={f"ablation.{k}": v for k, v in cell["axes"].items()}) as child:
                tracking.log_training(result["stage1"], loss_history(result["stage1"]), "stage1")
                metrics = role_metrics(result["dev"])
                singles = [v["dev"]["mean_task"] for v in result["variants"]]
                if cell["merged"]:
                    metrics["dev_best_single_mean_task"] = max(singles)
                    metrics["dev_merge_gain"] = result["dev"]["mean_task"] - max(singles)
                    tracking.write_json_artifact(result["merge"], "merge/provenance.json")
                tracking.log_metrics(metrics)
                children.append({"run_id": child.info.run_id, "kind": "cell", "name": cell["name"],
                                 "axes": cell["axes"], "dev_mean_task": result["dev"].get("mean_task")})
    return {"mlflow_run_id": run.info.run_id, "experiment": recipe.experiment_name,
            "tracking_uri": tracking_uri(), "children": children}


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


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
