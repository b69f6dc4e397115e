"""Commands of the mining area."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""

    @app.command("mine")
    def mine(
        records: str = typer.Argument(..., help="Records JSONL/Parquet (local or s3://)."),
        corpus: str = typer.Argument(..., help="Corpus JSONL of {\"id\", \"text\"} documents (local or s3://)."),
        out: str = typer.Option(..., "--out", "-o", help="Where to write the records with mined negatives."),
        recipe: Path = typer.Option(None, "--recipe", "-r", help="Recipe YAML whose `mining` section to use."),
        override: list[str] = typer.Option([], "--set", help="Recipe override, e.g. --set mining.top_k=8."),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="Corpus-embedding chunk cache (resumable)."),
        summary: Path = typer.Option(None, "--summary", help="Also write the statistics as JSON here."),
    ) -> None:
        """Mine positive-aware hard negatives (TopK-PercPos) with the recipe's teachers."""
        import json

        from embedpipe.mining.config import MiningConfig
        from embedpipe.mining.mine import mine_hard_negatives

        from embedpipe.recipe import RecipeError, load_recipe, section_from_overrides

        try:
            config = (load_recipe(recipe, override).mining if recipe is not None
                      else section_from_overrides("mining", MiningConfig, override))
        except RecipeError as err:
            raise typer.BadParameter(str(err)) from None
        stats = mine_hard_negatives(records, corpus, config, out, cache_dir=cache_dir)
        if summary is not None:
            summary.parent.mkdir(parents=True, exist_ok=True)
            summary.write_text(json.dumps(stats, indent=2))
