"""``embedpipe evaluate`` and ``embedpipe leaderboard``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("evaluate")(evaluate)
    app.command("leaderboard")(leaderboard)


def evaluate(
    model_dir: str = typer.Argument(..., help="An encoder export, a sentence-transformers folder, or "
                                              "'all-minilm-l6-v2' (packaged)."),
    out_dir: Path = typer.Argument(..., help="Where mteb result files (results/<org>__<model>/<revision>/) go."),
    recipe: Path = typer.Option(None, help="Recipe whose `evaluation` section to use (default: an empty section)."),
    tasks_dir: Path = typer.Option(None, "--tasks-dir", help="A folder with tasks.json (e.g. <data>/eval)."),
    task: list[str] = typer.Option([], "--task", help="An mteb task name (needs hub access for its data)."),
    benchmark: str = typer.Option(None, help="An mteb benchmark, e.g. 'MTEB(Multilingual, v2)' (needs hub access)."),
    reference: Path = typer.Option(None, help="Folder of mteb result files to rank against (Borda)."),
    model_name: str = typer.Option(None, help="Name in the results ('org/name'; default: embedpipe/<folder>)."),
    cache_dir: Path = typer.Option(None, help="Embedding cache folder (default: ~/.cache/embedpipe/embeddings)."),
    batch_size: int = typer.Option(None, help="Texts per forward pass."),
) -> None:
    """Score a model with mteb; re-runs skip tasks that have results and re-encode nothing (embedding cache)."""
    from embedpipe.evaluation.config import EvaluationConfig
    from embedpipe.evaluation.run import evaluate as run_evaluation

    if recipe is not None:
        from embedpipe.recipe import load_recipe

        config = load_recipe(recipe).evaluation
    else:
        config = EvaluationConfig()
    updates = {"tasks": list(config.tasks) + list(task)}
    if benchmark:
        updates["benchmark"] = benchmark
    if reference:
        updates["reference_results"] = str(reference)
    if batch_size:
        updates["batch_size"] = batch_size
    config = config.model_copy(update=updates)
    summary = run_evaluation(model_dir, config, out_dir, extra_tasks_dir=tasks_dir, cache_dir=cache_dir,
                             model_name=model_name)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['model_name']} ({summary['revision']})")
    table.add_column("Task")
    table.add_column("Type")
    table.add_column("Score", justify="right")
    table.add_column("", justify="left")
    for name, score in summary["scores"].items():
        table.add_row(name, summary["task_types"][name], f"{100 * score:.2f}",
                      "cached" if name in summary["skipped"] else "")
    table.add_row("Mean (Task)", "", f"{100 * summary['mean_task']:.2f}", "")
    table.add_row("Mean (TaskType)", "", f"{100 * summary['mean_task_type']:.2f}", "")
    if summary.get("borda_rank") is not None:
        table.add_row("Rank (Borda)", "", str(summary["borda_rank"]), f"of {len(summary['leaderboard'])}")
    Console().print(table)


def leaderboard(
    results: list[Path] = typer.Argument(..., help="Folders of mteb result files (e.g. evaluation out_dirs, a "
                                                   "checkout of public results)."),
    task: list[str] = typer.Option([], "--task", help="Rank on these tasks only (default: every task found)."),
    plot: Path = typer.Option(Path("leaderboard.png"), help="Where to write the PNG plot."),
    json_out: Path = typer.Option(None, "--json", help="Also write the table as JSON."),
    mlflow_experiment: str = typer.Option(None, "--mlflow-experiment",
                                          help="Log the table to a new run of this MLflow experiment."),
) -> None:
    """Models x task types with Mean(Task), Mean(TaskType) and Borda rank, computed as mteb's leaderboard does."""
    from rich.console import Console

    from embedpipe.evaluation.leaderboard import Results, build_leaderboard, load_results_folder

    merged = Results()
    for folder in results:
        if not folder.is_dir():
            raise typer.BadParameter(f"results folder {folder} does not exist", param_hint="RESULTS")
        merged = merged + load_results_folder(folder)
    board = build_leaderboard(merged, tasks=list(task) or None)
    Console().print(board.rich_table())
    board.plot(plot)
    typer.echo(f"plot written to {plot}")
    if json_out:
        json_out.write_text(json.dumps(board.to_records(), indent=2))
    import mlflow

    if mlflow_experiment:
        mlflow.set_experiment(mlflow_experiment)
        with mlflow.start_run(run_name="leaderboard"):
            board.log_to_mlflow()
            mlflow.log_artifact(str(plot), artifact_path="leaderboard")
    elif mlflow.active_run() is not None:
        board.log_to_mlflow()
