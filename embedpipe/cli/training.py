"""Commands of the training area: ``embedpipe train`` (one stage, optionally over N local processes with torchrun)
and ``embedpipe consolidate`` (a FSDP2 / DeepSpeed / torch checkpoint -> encoder export, on CPU)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""

    @app.command("train")
    def train(
        stage: str = typer.Argument(..., help="stage1 (retrieval pretraining) or stage2 (mixed-task fine-tuning)."),
        records: str = typer.Option(..., "--records", help="Records with mined negatives (local or s3://)."),
        init_model: str = typer.Option(..., "--init-model", help="Encoder export or base checkpoint to start from."),
        out: str = typer.Option(..., "--out", "-o", help="Output encoder export (local or s3://)."),
        recipe: Path = typer.Option(Path("recipes/local.yaml"), "--recipe", "-r", help="Recipe YAML."),
        override: list[str] = typer.Option([], "--set", help="Recipe override, e.g. --set training.stage1.steps=50."),
        checkpoint_dir: str = typer.Option(None, "--checkpoint-dir", help="Periodic checkpoints (local or s3://)."),
        no_resume: bool = typer.Option(False, "--no-resume", help="Ignore checkpoints already in --checkpoint-dir."),
        variant: str = typer.Option(None, "--variant", help="Stage-2 variant as JSON, or the name of one in the recipe."),
        nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (torchrun; gloo on CPU, NCCL on GPU)."),
        summary: Path = typer.Option(None, "--summary", help="Write the training summary JSON here."),
    ) -> None:
        """Train one stage with the recipe's loss, backend and schedule; resumable from --checkpoint-dir."""
        import json
        import os

        from embedpipe.recipe import load_recipe
        from embedpipe.training.config import Stage2Variant
        from embedpipe.training.launch import launch_local, run

        loaded = load_recipe(recipe, override)  # loaded once: a bad recipe or override fails before any process
        chosen = None
        if variant:
            if variant.lstrip().startswith("{"):
                try:
                    chosen = Stage2Variant.model_validate_json(variant).overrides()
                except ValueError as err:
                    raise typer.BadParameter(f"--variant {variant}: {err}") from None
            else:
                found = [v for v in loaded.training.variants() if v.name == variant]
                if not found:
                    names = ", ".join(v.name for v in loaded.training.variants())
                    raise typer.BadParameter(f"no stage-2 variant {variant!r} in {recipe} (variants: {names})")
                chosen = found[0].overrides()
        if nproc == 1:
            run(loaded, stage, records, init_model, out, variant=chosen, checkpoint_dir=checkpoint_dir,
                resume=not no_resume, summary_path=str(summary) if summary else None)
            return
        # N processes: they read the resolved recipe from the environment (as training jobs do), not the file again
        os.environ["EMBEDPIPE_RECIPE_JSON"] = loaded.model_dump_json()
        args = ["--recipe-env", "EMBEDPIPE_RECIPE_JSON", "--stage", stage, "--records", records,
                "--init-model", init_model, "--out", out]
        if checkpoint_dir:
            args += ["--checkpoint-dir", checkpoint_dir]
        if no_resume:
            args.append("--no-resume")
        if chosen:
            args += ["--variant", json.dumps(chosen)]
        if summary:
            args += ["--summary", str(summary)]
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        try:
            launch_local(nproc, args)
        except ChildFailedError as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(1) from None

    @app.command("render-training")
    def render_training(
        recipe: Path = typer.Option(Path("recipes/llama-embed-nemotron-8b.yaml"), "--recipe", "-r", help="Recipe YAML."),
        out: Path = typer.Option(Path("k8s/base/training"), "--out", "-o", help="Folder for trainjob.yaml / pytorchjob.yaml."),
    ) -> None:
        """Write the training jobs the multi-node launcher submits (TrainJob and PyTorchJob, stage 1, suspended) as
        k8s/ templates, from the launcher's own builder."""
        from embedpipe.orchestration.k8s_jobs import write_templates
        from embedpipe.recipe import load_recipe

        for path in write_templates(load_recipe(recipe), out, source=recipe.as_posix()):
            typer.echo(str(path))

    @app.command("consolidate")
    def consolidate_cmd(
        checkpoint: Path = typer.Argument(..., help="A checkpoint folder (<checkpoint-dir>/step-N)."),
        init_model: str = typer.Option(..., "--init-model", help="The export/base the run started from (config, tokenizer)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output encoder export."),
        max_length: int = typer.Option(512, "--max-length"),
    ) -> None:
        """Consolidate a torch / FSDP2 / DeepSpeed checkpoint into an encoder export, on CPU."""
        from embedpipe.training.consolidate import consolidate

        path = consolidate(checkpoint, init_model, out, max_length=max_length)
        typer.echo(str(path))
