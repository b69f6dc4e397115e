"""Compile the pipelines to KFP IR YAML for a recipe (node pool, GPUs, images from the recipe's pipeline section).

``pipelines/compiled/`` holds the committed YAML of the shipped recipes; ``tests/test_pipeline_compiled.py`` fails
when it is out of date with the code (``embedpipe compile`` rewrites it).

The pipelines sit above orchestration: every function here is handed a pipeline builder (``build(settings)`` ->
the ``@dsl.pipeline`` function, see ``embedpipe.pipelines.PIPELINES``) and imports none itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from embedpipe.orchestration.cluster import ClusterSettings
from embedpipe.orchestration.images import retarget

COMMITTED_RECIPES = ("local", "llama-embed-nemotron-8b")

Builder = Callable[[ClusterSettings], Callable]  # ClusterSettings -> the @dsl.pipeline function


def pipeline_function(build: Builder, recipe=None, local: bool = False):
    """The pipeline ``build`` makes for ``recipe``'s cluster settings (defaults without a recipe); ``local`` for
    kfp.local runs (no hub/cache env on the tasks)."""
    return build(ClusterSettings.from_recipe(recipe, local=local) if recipe is not None else ClusterSettings())


def pipeline_kind(func) -> str:
    """``full`` for the ``embedpipe-full`` pipeline."""
    return func.name.removeprefix("embedpipe-")


def compiled_documents(build: Builder, recipe=None) -> list[dict]:
    """The IR documents (pipeline spec, then the Kubernetes platform spec) with the recipe's images."""
    from kfp import compiler

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline_function(build, recipe), str(path))
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if recipe is not None:
        docs[0] = retarget(docs[0], recipe.pipeline.image_registry, recipe.pipeline.image_tag)
    return docs


def compile_pipeline(build: Builder, recipe, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    kind = pipeline_kind(build(ClusterSettings()))
    header = f"# embedpipe {kind} pipeline for recipe {recipe.name!r}: written by `embedpipe compile`, do not edit.\n"
    out.write_text(header + yaml.safe_dump_all(compiled_documents(build, recipe), sort_keys=True))
    return out


def compiled_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "pipelines" / "compiled"


def committed_path(recipe_name: str, kind: str) -> Path:
    return compiled_dir() / f"{recipe_name}-{kind}.yaml"


def compile_committed(pipelines: Mapping[str, Builder]) -> list[Path]:
    """Rewrite pipelines/compiled/ for the shipped recipes and ``pipelines`` (name -> builder)."""
    from embedpipe.recipe import load_recipe, recipes_dir

    out = []
    for name in COMMITTED_RECIPES:
        recipe = load_recipe(recipes_dir() / f"{name}.yaml")
        for kind, build in pipelines.items():
            out.append(compile_pipeline(build, recipe, committed_path(name, kind)))
    return out
