"""``embedpipe run``, ``compile``, ``submit`` and ``compare``: the pipeline area's commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("run")(run)
    app.command("compile")(compile_)
    app.command("submit")(submit)
    app.command("compare")(compare)


PIPELINE_HELP = "Which pipeline: 'full' (data -> ... -> merged model) or 'ablation' (the pipeline.ablation grid)."


def _builder(pipeline: str):
    from embedpipe.pipelines import builder

    try:
        return builder(pipeline)
    except ValueError as err:
        typer.secho(f"error: --pipeline: {err}", fg="red", err=True)
        raise typer.Exit(2) from None


def _load(recipe: Path, overrides: list[str]):
    from embedpipe.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides)
    except RecipeError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None


def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/local.yaml."),
    overrides: list[str] = typer.Option([], "--set", help="Recipe override section.key=value (repeatable)."),
    pipeline: str = typer.Option("full", help=PIPELINE_HELP),
    run_name: str = typer.Option("", help="Run name: the MLflow parent run is '<recipe> · <name>' (default: the "
                                          "KFP run's name, embedpipe-<pipeline>-<timestamp>)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every step even if its inputs are unchanged."),
    runner: str = typer.Option("local", help="local: every step in this environment; docker: every step in its "
                                             "role image through kfp.local's DockerRunner (Docker, or podman's "
                                             "socket at DOCKER_HOST; images from scripts/build_images.sh)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every step's own output too (kfp's executor "
                                                                "lines, library warnings, progress bars)."),
) -> None:
    """Run the pipeline on this machine with kfp.local (no cluster), same definition as on Kubeflow.

    Checks the recipe, files and endpoints first; a re-run with the same inputs skips the finished steps. Shows each
    step's state, time and key figure (a live table on a terminal, a line per change elsewhere); each step's full
    output is in its own log file under the run's KFP work folder (``logs/``), named when a step fails.
    """
    import sys

    from rich.console import Console

    from embedpipe.cli.run_view import RunView, comparison_table, evaluations, failure
    from embedpipe.orchestration.local_runner import run_local
    from embedpipe.orchestration.preflight import PreflightError
    from embedpipe.orchestration.progress import StepFailed, tail

    console = Console(file=sys.stdout)  # bound now: during the run sys.stdout carries the steps' output to their logs
    if not console.is_terminal:
        console.width = max(console.width, 120)  # CI logs: room for the score table's columns
    build = _builder(pipeline)
    loaded = _load(recipe, overrides)
    console.rule(f"embedpipe {pipeline} pipeline: recipe {loaded.name!r}")
    view = RunView(console, f"embedpipe {pipeline}", live=console.is_terminal and not verbose)
    try:
        with view:
            result = run_local(loaded, build, run_name=run_name, cache=not no_cache, runner=runner,
                               on_step=view.on_step, echo=sys.stdout if verbose else None)
    except PreflightError as err:
        console.print(f"[red]pre-flight failed:[/red] {err}")
        raise typer.Exit(2) from None
    except StepFailed as err:
        failure(console, err.step, tail(err.step.log))
        raise typer.Exit(1) from None
    except (RuntimeError, ValueError) as err:
        if "container engine" not in str(err) and "runner " not in str(err):
            raise
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.rule("done")
    table = comparison_table(evaluations(result.get("steps", [])))
    if table is not None:
        console.print(table)
    counts = {state: sum(s["state"] == state for s in result.get("steps", [])) for state in ("done", "cached")}
    console.print(f"finished in {result['seconds']:.1f}s: {counts['done']} steps ran, {counts['cached']} from the "
                  f"cache (KFP work folder: {result['work_root']})", soft_wrap=True)
    if result.get("logs"):
        console.print(f"step logs:  {result['logs']}", soft_wrap=True)
    if "model_uri" in result:
        console.print(f"model:      {result['model_uri']}", soft_wrap=True)
        console.print(f"scores:     {result['scores_uri']}  {json.dumps(result.get('scores', {}))}", soft_wrap=True)
        console.print(f"KServe:     {result['manifest']}", soft_wrap=True)
    for child in result.get("children", []):
        figures = {k: v for k, v in child.items() if k not in ("name", "run_id")}
        console.print(f"cell {child['name']}: {json.dumps(figures)}", soft_wrap=True)
    tracking_uri = result["tracking_uri"]
    console.print(f"MLflow:     run {result['mlflow_run_id']} in experiment {result['experiment']!r} at {tracking_uri}",
                  soft_wrap=True)
    if result.get("mlflow_url"):  # the training runs in MLflow's model-training view
        console.print(f"            open: {result['mlflow_url']}", soft_wrap=True)
    elif not tracking_uri.startswith("http"):
        console.print(f"            view with: mlflow ui --backend-store-uri {tracking_uri}", soft_wrap=True)


def compile_(
    recipe: Path = typer.Option(None, help="Recipe whose node pool, GPUs and images to compile for; "
                                           "without it, rewrite pipelines/compiled/ for the shipped recipes."),
    pipeline: str = typer.Option("full", help=PIPELINE_HELP),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write the IR YAML."),
    overrides: list[str] = typer.Option([], "--set", help="Recipe override section.key=value (repeatable)."),
) -> None:
    """Compile a pipeline to KFP IR YAML (with the Kubernetes platform spec: node selectors, tolerations, GPUs,
    secrets)."""
    from embedpipe.orchestration.compile import compile_committed, compile_pipeline
    from embedpipe.pipelines import PIPELINES

    if recipe is None:
        for path in compile_committed(PIPELINES):
            typer.echo(f"wrote {path}")
        return
    build = _builder(pipeline)
    loaded = _load(recipe, overrides)
    out = output or Path(f"{loaded.name}-{pipeline}.yaml")
    typer.echo(f"wrote {compile_pipeline(build, loaded, out)}")


def submit(
    recipe: Path = typer.Argument(..., help="Recipe YAML (runner: kfp)."),
    host: str = typer.Option(None, help="KFP API endpoint (default: the recipe's pipeline.kfp_host)."),
    pipeline: str = typer.Option("full", help=PIPELINE_HELP),
    run_name: str = typer.Option("", help="KFP and MLflow run name."),
    overrides: list[str] = typer.Option([], "--set", help="Recipe override section.key=value (repeatable)."),
    skip_endpoint_checks: bool = typer.Option(False, help="Skip reaching S3/MLflow from here (in-cluster names)."),
) -> None:
    """Compile and send a pipeline run to a Kubeflow Pipelines endpoint (kfp.Client)."""
    import tempfile

    import kfp

    from embedpipe.orchestration.compile import compile_pipeline
    from embedpipe.orchestration.preflight import PreflightError, preflight

    build = _builder(pipeline)
    loaded = _load(recipe, overrides)
    endpoint = host or loaded.pipeline.kfp_host
    if not endpoint:
        typer.secho("error: give --host or set pipeline.kfp_host in the recipe", fg="red", err=True)
        raise typer.Exit(2)
    try:
        preflight(loaded, runner="kfp", check_endpoints=not skip_endpoint_checks)
    except PreflightError as err:
        typer.secho(f"pre-flight failed: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(build, loaded, Path(tmp) / f"{pipeline}.yaml")
        client = kfp.Client(host=endpoint)
        result = client.create_run_from_pipeline_package(
            str(package), arguments={"recipe_json": loaded.model_dump_json(), "run_name": run_name},
            run_name=run_name or None, experiment_name=loaded.experiment_name,
        )
    typer.echo(f"submitted run {result.run_id} to {endpoint} (experiment {loaded.experiment_name})")


def compare(
    experiment: str = typer.Argument(None, help="MLflow experiment (default: the recipe's)."),
    recipe: Path = typer.Option(None, help="Take the experiment name and tracking URI from this recipe."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: the recipe's, else $MLFLOW_TRACKING_URI)."),
    parent: str = typer.Option(None, help="Compare the child runs of this parent run (an ablation's cells, a "
                                          "pipeline's training jobs); 'latest': the newest pipeline run."),
    metric: list[str] = typer.Option([], "--metric", help="Metrics to show, the first one plotted (default: the dev "
                                                          "and test Mean(Task) and Mean(TaskType), the merge gain)."),
    plot: Path = typer.Option(Path("compare.png"), help="Where to write the plot of scores per variant."),
    children: bool = typer.Option(False, help="Include child runs when no --parent is given."),
) -> None:
    """Print an experiment's runs side by side (only the parameters that differ) and plot their scores."""
    import os

    from rich.console import Console

    from embedpipe import tracking

    uri = tracking_uri
    if recipe is not None:
        loaded = _load(recipe, [])
        experiment = experiment or loaded.experiment_name
        uri = uri or tracking.resolve_tracking_uri(loaded.pipeline.mlflow_tracking_uri)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not experiment or not uri:
        typer.secho("error: give an experiment and a tracking URI (or --recipe)", fg="red", err=True)
        raise typer.Exit(2)
    from embedpipe.evaluation import compare as comparing

    tracking.setup(uri)
    try:
        if parent == "latest":
            parent = tracking.latest_pipeline_run(experiment)
        result = comparing.compare_runs(experiment, out_png=plot, parent_run_id=parent, metrics=metric or None,
                                        include_children=children)
    except tracking.TrackingError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    console = Console()
    for table in comparing.comparison_tables(result):
        console.print(table)
    if result["plot"]:
        typer.echo(f"plot: {result['plot']}")
