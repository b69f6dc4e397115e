"""Greedy soup (Wortsman et al., 2022, Algorithm 1): beyond the paper's uniform average, add checkpoints to the
average one at a time, best first by their own dev score, keeping each when the dev score of the averaged model is at
least the best so far (ties are kept, as in the paper). Scores come from the dev tasks, never the test tasks."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from embedpipe import tracking
from embedpipe.merging.config import MergeConfig
from embedpipe.merging.merge import merge_checkpoints

log = logging.getLogger(__name__)

Scorer = Callable[[Path], float]


def evaluation_scorer(config, extra_tasks_dir: str | Path | None, work_dir: str | Path,
                      cache_dir: str | Path | None = None) -> Scorer:
    """Dev score = Mean(Task) of :func:`embedpipe.evaluation.run.evaluate` on the dev tasks (``role="dev"``: the
    local tasks' dev splits, ``evaluation.dev_local_tasks``, ``evaluation.dev_tasks``); never the test tasks."""
    from embedpipe.evaluation.run import evaluate

    counter = iter(range(1_000_000))

    def score(model_dir: Path) -> float:
        summary = evaluate(model_dir, config, Path(work_dir) / "soup-eval", extra_tasks_dir=extra_tasks_dir,
                           cache_dir=cache_dir, model_name=f"embedpipe/soup-{next(counter)}", role="dev")
        return float(summary["mean_task"])

    return score


def greedy_soup(model_dirs: Sequence[str | Path], out_dir: str | Path, score: Scorer,
                shard_size: str | int = "5GB", work_dir: str | Path | None = None) -> dict:
    """Score each checkpoint, sort best first, and grow a uniform average, keeping a candidate whenever the averaged
    model's score is at least the best so far (Wortsman et al. 2022, Algorithm 1: ``>=``)."""
    dirs = [Path(d) for d in model_dirs]
    if not dirs:
        raise ValueError("no checkpoints for the soup")

    def checked(model_dir: Path) -> float:
        value = float(score(model_dir))
        if math.isnan(value):  # e.g. a collapsed model with constant similarities: never better than anything
            log.warning("dev score of %s is NaN; counted as -inf", model_dir)
            return -math.inf
        return value

    individual = {str(d): checked(d) for d in dirs}
    order = sorted(dirs, key=lambda d: individual[str(d)], reverse=True)
    ingredients = [order[0]]
    best = individual[str(order[0])]
    history = [{"candidate": str(order[0]), "score": best, "accepted": True}]
    tmp_root = Path(tempfile.mkdtemp(prefix="soup-", dir=work_dir))
    try:
        for step, candidate in enumerate(order[1:], start=1):
            trial = tmp_root / f"trial-{step}"
            merge_checkpoints(ingredients + [candidate], trial, shard_size=shard_size, track=False)
            value = checked(trial)
            accepted = value >= best  # ties kept (the paper's Algorithm 1)
            history.append({"candidate": str(candidate), "score": value, "accepted": accepted})
            log.info("soup step %d: %s -> %.5f (%s; best %.5f)", step, candidate.name, value,
                     "kept" if accepted else "dropped", best)
            if accepted:
                ingredients.append(candidate)
                best = value
            shutil.rmtree(trial, ignore_errors=True)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    summary = merge_checkpoints(ingredients, out_dir, shard_size=shard_size)
    summary.update({
        "method": "greedy_soup",
        "ingredients": [str(d) for d in ingredients],
        "individual_scores": individual,
        "history": history,
        "score": best,
    })
    _log_to_mlflow(summary)
    return summary


def merge_with_config(config: MergeConfig, model_dirs: Sequence[str | Path], out_dir: str | Path,
                      scorer: Scorer | None = None) -> dict:
    """The recipe's merge: ``uniform`` / ``weighted`` (``config.weights``) / ``greedy_soup`` (needs a scorer)."""
    if config.method == "greedy_soup":
        if scorer is None:
            raise ValueError("merge.method greedy_soup needs a dev score: pass a scorer (see evaluation_scorer)")
        return greedy_soup(model_dirs, out_dir, scorer, shard_size=config.shard_size)
    if config.method == "weighted" and not config.weights:
        raise ValueError("merge.method weighted needs merge.weights (one per checkpoint)")
    weights = config.weights if config.method == "weighted" else None
    return merge_checkpoints(model_dirs, out_dir, weights=weights, shard_size=config.shard_size)


def _log_to_mlflow(summary: dict) -> None:
    if not tracking.active():
        return
    import mlflow

    for step, item in enumerate(summary["history"]):
        mlflow.log_metric("soup.score", item["score"], step=step)
    tracking.log_params({"soup.ingredients": len(summary["ingredients"])})
    mlflow.log_dict({k: summary[k] for k in ("ingredients", "individual_scores", "history", "score")},
                    "merge/soup.json")
