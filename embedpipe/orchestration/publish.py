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


def record_ablation(recipe: Recipe, run_name: str, cell_summaries: list[dict], results_dirs: list[str]) -> dict:
    """One parent run for the grid; each cell a child run with its axes as params and its scores as metrics."""
    _setup(recipe)
    children = []
    with tracking.recipe_run(recipe, run_name=run_name or "ablation", tags={"embedpipe.pipeline": "ablation"}) as run:
        for summary, results in zip(cell_summaries, results_dirs):
            cell = summary["cell"]
            scores = json.loads((Path(results) / "scores.json").read_text())
            with tracking.recipe_run(recipe, run_name=cell["name"], parent_run_id=run.info.run_id,
                                     tags={"embedpipe.pipeline": "ablation"},
                                     params={f"ablation.{k}": v for k, v in cell["axes"].items()}) as child:
                tracking.log_scores(scores)
                for stage2 in summary.get("stage2", []):
                    tracking.log_training(stage2, loss_history(stage2), f"stage2.{stage2['variant']['name']}")
                children.append({"run_id": child.info.run_id, "name": cell["name"], **_headline(scores)})
    return {"mlflow_run_id": run.info.run_id, "experiment": recipe.experiment_name, "children": children}


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
