"""Compile the pipelines to KFP IR YAML for a recipe (node pool, GPUs, images from the recipe's pipeline section).

``pipelines/compiled/`` holds the committed YAML of the shipped recipes; ``tests/test_pipeline_compiled.py`` fails
when it is out of date with the code (``embedpipe compile`` rewrites it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from embedpipe.orchestration.cluster import ClusterSettings
from embedpipe.orchestration.images import retarget

PIPELINES = ("full", "ablation")
COMMITTED_RECIPES = ("local", "llama-embed-nemotron-8b")


def pipeline_function(kind: str, recipe=None, local: bool = False):
    """The pipeline definition for ``recipe``'s cluster settings (defaults without a recipe); ``local`` for
    kfp.local runs (no hub/cache env on the tasks)."""
    settings = ClusterSettings.from_recipe(recipe, local=local) if recipe is not None else ClusterSettings()
    if kind == "full":
        from embedpipe.pipelines.full import build_full_pipeline

        return build_full_pipeline(settings)
    if kind == "ablation":
        from embedpipe.pipelines.ablation import build_ablation_pipeline

        from embedpipe.orchestration.ablation import plan_grid

        return build_ablation_pipeline(settings, plan_grid(recipe) if recipe is not None else None)
    raise ValueError(f"unknown pipeline {kind!r}; one of {PIPELINES}")


def compiled_documents(kind: str, recipe=None) -> list[dict]:
    """The IR documents (pipeline spec, then the Kubernetes platform spec) with the recipe's images."""
    from kfp import compiler

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline_function(kind, recipe), str(path))
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if recipe is not None:
        docs[0] = retarget(docs[0], recipe.pipeline.image_registry, recipe.pipeline.image_tag)
    return docs


def compile_pipeline(kind: str, recipe, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# embedpipe {kind} pipeline for recipe {recipe.name!r}: written by `embedpipe compile`, do not edit.\n"
    out.write_text(header + yaml.safe_dump_all(compiled_documents(kind, recipe), sort_keys=True))
    return out


def compiled_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "pipelines" / "compiled"


def committed_path(recipe_name: str, kind: str) -> Path:
    return compiled_dir() / f"{recipe_name}-{kind}.yaml"


def compile_committed() -> list[Path]:
    """Rewrite pipelines/compiled/ for the shipped recipes."""
    from embedpipe.recipe import load_recipe, recipes_dir

    out = []
    for name in COMMITTED_RECIPES:
        recipe = load_recipe(recipes_dir() / f"{name}.yaml")
        for kind in PIPELINES:
            out.append(compile_pipeline(kind, recipe, committed_path(name, kind)))
    return out
