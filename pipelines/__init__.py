"""The pipeline definitions, by the name the CLI takes (``embedpipe run/compile/submit --pipeline``).

Each entry builds the pipeline for a node pool (``ClusterSettings``); orchestration (compile, the local runner)
is handed one of them and imports no pipeline itself, so the layers stay orchestration -> pipelines -> cli."""

from embedpipe.pipelines.ablation import build_ablation_pipeline
from embedpipe.pipelines.full import build_full_pipeline

PIPELINES = {"full": build_full_pipeline, "ablation": build_ablation_pipeline}


def builder(kind: str):
    """The builder of pipeline ``kind`` (a ValueError naming the choices for another name)."""
    try:
        return PIPELINES[kind]
    except KeyError:
        raise ValueError(f"unknown pipeline {kind!r}; one of {', '.join(PIPELINES)}") from None
