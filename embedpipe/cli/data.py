"""``embedpipe data build|validate|generate|mix``: the data area's commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer

data_app = typer.Typer(help="Training data: build from sources, validate record files, generate synthetic data.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.add_typer(data_app, name="data")


def _recipe(recipe: Path, overrides: list[str] | None):
    from embedpipe.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides or [])
    except RecipeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@data_app.command("build")
def build(
    recipe: Path = typer.Argument(..., help="Recipe YAML (e.g. recipes/local.yaml)."),
    out_dir: str = typer.Argument(..., help="Output folder or s3:// URI (records.jsonl, corpus.jsonl, eval/, manifest)."),
    overrides: list[str] = typer.Option(None, "--set", help="Recipe override section.key=value (repeatable)."),
) -> None:
    """Load every recipe source, validate, decontaminate, and write records, corpus, eval tasks and a manifest."""
    from embedpipe.data.build import build_training_data

    r = _recipe(recipe, overrides)
    manifest = build_training_data(r.data, out_dir, stages={"stage1": r.training.stage1, "stage2": r.training.stage2})
    typer.echo(json.dumps({k: manifest[k] for k in ("records", "by_source", "corpus_documents", "dropped",
                                                    "decontamination", "eval_tasks")}, indent=2))


@data_app.command("validate")
def validate(
    path: str = typer.Argument(..., help="A records file (.jsonl or .parquet, local or s3://)."),
    lenient: bool = typer.Option(False, "--lenient", help="Drop bad rows and count them instead of stopping at the first."),
) -> None:
    """Check a records file against the schema; the first error names file, line and field (exit 1)."""
    from embedpipe.data.schema import ReadReport, RecordError, read_records

    report = ReadReport(path)
    try:
        records = read_records(path, lenient=lenient, report=report)
    except (RecordError, FileNotFoundError) as err:
        typer.echo(f"invalid: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({**report.to_dict(), "records": len(records)}, indent=2))
    if report.dropped:
        raise typer.Exit(1)


@data_app.command("generate")
def generate(
    recipe: Path = typer.Argument(..., help="Recipe YAML with an sdg section."),
    out_dir: str = typer.Argument(..., help="Output folder (shards/, synthetic.jsonl, sdg_manifest.json); reruns resume."),
    corpus: str = typer.Option(None, help="Seed corpus JSONL ({id, text}); default: Python's docs when seed_corpus=pydoc."),
    max_shards: int = typer.Option(None, help="Stop after this many new shards (resume later)."),
    overrides: list[str] = typer.Option(None, "--set", help="Recipe override section.key=value (repeatable)."),
) -> None:
    """Generate synthetic training records with the recipe's mix of generator LLMs."""
    from embedpipe.data.sdg import generate_synthetic, synthetic_source

    r = _recipe(recipe, overrides)
    summary = generate_synthetic(r.sdg, corpus, out_dir, source=synthetic_source(r.data), max_shards=max_shards)
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("mix")
def mix(
    recipe: Path = typer.Argument(..., help="Recipe YAML (data.sources weights)."),
    records: str = typer.Argument(..., help="Records file to sample from."),
    stage: str = typer.Option("stage1", help="stage1 (pretraining weights) or stage2 (fine-tuning weights)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the stage's records here."),
    overrides: list[str] = typer.Option(None, "--set", help="Recipe override section.key=value (repeatable)."),
) -> None:
    """Show (and optionally write) one stage's data mix: counts per source, task type and language."""
    from embedpipe.data.mix import mix_manifest, select_stage_records
    from embedpipe.data.schema import read_records, write_records

    r = _recipe(recipe, overrides)
    stage_cfg = getattr(r.training, stage, None) if stage in ("stage1", "stage2") else None
    selected = select_stage_records(read_records(records, lenient=True), r.data, stage,
                                    weights_override=getattr(stage_cfg, "data_weights", None),
                                    task_types=getattr(stage_cfg, "task_types", None))
    if output:
        write_records(selected, output)
    typer.echo(json.dumps(mix_manifest(selected), indent=2))
