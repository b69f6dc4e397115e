"""``embedpipe merge``: average checkpoints (uniform, weighted, or greedy soup on a dev evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("merge")(merge)


def merge(
    model_dirs: list[Path] = typer.Argument(..., help="Encoder exports to average (same architecture)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Where to write the merged encoder export."),
    weight: list[float] = typer.Option([], "--weight", "-w", help="One weight per checkpoint (default: uniform)."),
    method: str = typer.Option("uniform", help="uniform | weighted | greedy_soup"),
    tasks_dir: Path = typer.Option(None, "--tasks-dir", help="greedy_soup: folder with the dev tasks' tasks.json."),
    recipe: Path = typer.Option(None, help="greedy_soup: recipe whose evaluation section scores the soup."),
    shard_size: str = typer.Option("5GB", help="Largest safetensors shard, e.g. 5GB or 500MB."),
) -> None:
    """Average N checkpoints tensor by tensor (peak memory about one model); write provenance beside them."""
    from embedpipe.merging.config import MergeConfig
    from embedpipe.merging.soup import evaluation_scorer, merge_with_config

    if weight and method == "uniform":
        method = "weighted"
    config = MergeConfig(method=method, weights=list(weight) or None, shard_size=shard_size)
    scorer = None
    if method == "greedy_soup":
        from embedpipe.evaluation.config import EvaluationConfig

        if recipe is None and tasks_dir is None:
            raise typer.BadParameter("greedy_soup needs dev tasks: give --tasks-dir and/or --recipe")
        evaluation = EvaluationConfig()
        if recipe is not None:
            from embedpipe.recipe import load_recipe

            evaluation = load_recipe(recipe).evaluation
        scorer = evaluation_scorer(evaluation, tasks_dir, out_dir.parent)
    summary = merge_with_config(config, model_dirs, out_dir, scorer=scorer)
    typer.echo(json.dumps({k: summary[k] for k in summary if k in ("out_dir", "method", "inputs", "shards",
                                                                  "ingredients", "score")}, indent=2))
