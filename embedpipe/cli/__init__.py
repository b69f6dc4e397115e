"""The ``embedpipe`` command line (typer). Each area registers its commands from its own module."""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="embedpipe",
    help="Train, evaluate, merge and serve instruction-aware text embedding models "
    "(the llama-embed-nemotron-8b recipe) with Kubeflow Pipelines, MLflow and KServe.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

COMMAND_MODULES = ["encoder", "data", "mining", "training", "merging", "evaluation", "pipeline", "serving"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"embedpipe.cli.{_name}").register(app)


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )


def main() -> None:
    app()
