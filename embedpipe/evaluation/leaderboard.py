"""Leaderboard over folders of mteb result files: Mean(Task), Mean(TaskType) and Borda rank, computed as mteb's
leaderboard does (``mteb.benchmarks._create_table``):

- per task, models are ranked by main score with ties averaged (``rank(method="average")``);
- a model earns ``n_models - rank`` points per task it has, 0 for a task it lacks, where ``n_models`` counts the models
  with at least one score;
- points are summed and ranked again, highest first, ties sharing the minimum rank;
- Mean(Task) and each task type's mean are plain means that are missing when any task is missing; Mean(TaskType) is
  the mean of the type means.
"""

from __future__ import annotations

from embedpipe import tracking

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

RANK = "Rank (Borda)"
MEAN_TASK = "Mean (Task)"
MEAN_TYPE = "Mean (TaskType)"
NOT_RESULTS = {"model_meta.json", "summary.json", "task_types.json", "merge_provenance.json"}


@dataclass
class Results:
    """Main scores of several models: ``scores[model][task]``, with the task types known from the files."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    task_types: dict[str, str] = field(default_factory=dict)

    def __add__(self, other: Results) -> Results:
        scores = {m: dict(t) for m, t in self.scores.items()}
        for model, tasks in other.scores.items():
            scores.setdefault(model, {}).update(tasks)
        return Results(scores, {**self.task_types, **other.task_types})


def load_results_folder(folder: str | Path) -> Results:
    """Read every mteb result file under ``folder`` (mteb's ``<org>__<model>/<revision>/<Task>.json`` layout, with or
    without the ``results/`` level); the model name comes from ``model_meta.json`` or the folder names."""
    from mteb import TaskResult

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {folder} does not exist")
    results = Results()
    revisions: dict[str, set[str]] = {}
    found: list[tuple[str, str, str, float]] = []
    for path in sorted(folder.rglob("*.json")):
        if path.name in NOT_RESULTS or "embeddings" in path.parts:
            if path.name == "task_types.json":
                try:
                    results.task_types.update(json.loads(path.read_text()))
                except (TypeError, ValueError) as err:  # invalid JSON, or not an object
                    raise ValueError(f"{path}: not a JSON object of task name -> task type ({err})") from None
            continue
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON ({err.msg})") from None
        if not isinstance(raw, dict) or "task_name" not in raw or "scores" not in raw:
            log.debug("%s is not an mteb result file; ignored", path)
            continue
        try:
            task_result = TaskResult.from_disk(path)
        except Exception as err:  # mteb raises pydantic / key errors for malformed files
            raise ValueError(f"{path}: not a valid mteb result file ({err})") from None
        name, revision = _model_identity(path)
        try:
            score = float(task_result.get_score())
        except Exception as err:
            raise ValueError(f"{path}: no main score ({err})") from None
        revisions.setdefault(name, set()).add(revision)
        found.append((name, revision, task_result.task_name, score))
    for name, revision, task, score in found:
        key = name if len(revisions[name]) == 1 else f"{name}@{revision[:8]}"
        results.scores.setdefault(key, {})[task] = score
    return results


def _model_identity(result_path: Path) -> tuple[str, str]:
    meta = result_path.parent / "model_meta.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
            if data.get("name"):
                return str(data["name"]), str(data.get("revision") or result_path.parent.name)
        except json.JSONDecodeError:
            pass
    return result_path.parent.parent.name.replace("__", "/"), result_path.parent.name


def borda_rank(scores: pd.DataFrame) -> pd.Series:
    """Rows: models, columns: tasks, NaN for a missing task -> integer Borda rank (1 = best)."""
    scores = scores.dropna(how="all")
    n = len(scores)
    points = (n - scores.rank(axis=0, method="average", ascending=False)).sum(axis=1, skipna=True)
    return points.rank(method="min", ascending=False).astype(int)


def task_type_of(task: str, known: dict[str, str]) -> str:
    if task in known:
        return known[task]
    try:
        from mteb.get_tasks import _TASKS_REGISTRY

        return _TASKS_REGISTRY[task].metadata.type
    except KeyError:
        return "Unknown"


@dataclass
class Leaderboard:
    table: pd.DataFrame  # index: model; columns: rank, means, one per task type
    per_task: pd.DataFrame  # index: model; columns: tasks
    task_types: dict[str, str]

    @property
    def type_columns(self) -> list[str]:
        return [c for c in self.table.columns if c not in (RANK, MEAN_TASK, MEAN_TYPE)]

    def rank_of(self, model: str) -> int | None:
        return int(self.table.loc[model, RANK]) if model in self.table.index else None

    def to_records(self) -> list[dict]:
        out = []
        for model, row in self.table.iterrows():
            item = {"model": model}
            for column, value in row.items():
                item[column] = None if (isinstance(value, float) and math.isnan(value)) else (
                    int(value) if column == RANK else float(value))
            item["tasks"] = {t: float(v) for t, v in self.per_task.loc[model].items() if v == v}
            out.append(item)
        return out

    def rich_table(self, title: str = "MTEB leaderboard"):
        from rich.table import Table

        table = Table(title=title)
        table.add_column(RANK, justify="right")
        table.add_column("Model", overflow="fold")
        for column in (MEAN_TASK, MEAN_TYPE, *self.type_columns):
            table.add_column(column, justify="right")
        for model, row in self.table.iterrows():
            cells = [str(int(row[RANK])), model]
            cells += ["-" if pd.isna(row[c]) else f"{100 * row[c]:.2f}" for c in (MEAN_TASK, MEAN_TYPE, *self.type_columns)]
            table.add_row(*cells)
        return table

    def plot(self, path: str | Path) -> Path:
        """Heatmap of models x task types (scores x100), models labelled with their Borda rank."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        columns = [MEAN_TASK, MEAN_TYPE, *self.type_columns]
        values = self.table[columns].to_numpy(dtype=float) * 100
        labels = [f"#{int(r)}  {m}" for m, r in zip(self.table.index, self.table[RANK])]
        fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 3, 0.55 * len(labels) + 1.8))
        masked = np.ma.masked_invalid(values)
        image = ax.imshow(masked, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(columns)), labels=columns, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels=labels)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                missing = np.isnan(values[i, j])
                dark = not missing and values[i, j] < np.nanmean(values)
                ax.text(j, i, "-" if missing else f"{values[i, j]:.1f}", ha="center", va="center",
                        color="white" if dark else "black", fontsize=9)
        ax.set_title("Scores by task type (x100), models by Borda rank")
        fig.colorbar(image, ax=ax, fraction=0.03)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def log_to_mlflow(self) -> None:
        """Each model's means and rank as metrics of the active run (no-op without one)."""
        if not tracking.active():
            return
        import mlflow

        metrics = {}
        for record in self.to_records():
            model = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in record["model"])
            for key in (RANK, MEAN_TASK, MEAN_TYPE, *self.type_columns):
                if record.get(key) is not None:
                    metrics[f"leaderboard.{model}.{key.replace(' ', '').replace('(', '_').replace(')', '')}"] = record[key]
        mlflow.log_metrics(metrics)
        mlflow.log_dict(self.to_records(), "leaderboard/leaderboard.json")


def build_leaderboard(results: Results, task_types: dict[str, str] | None = None,
                      tasks: list[str] | None = None) -> Leaderboard:
    """Leaderboard over ``tasks`` (default: every task any model has)."""
    known = {**results.task_types, **(task_types or {})}
    per_task = pd.DataFrame.from_dict(results.scores, orient="index")
    if tasks is not None:
        per_task = per_task.reindex(columns=tasks)
    per_task = per_task.reindex(columns=sorted(per_task.columns)).astype(float).dropna(how="all")
    if per_task.empty:
        raise ValueError("no results to rank")
    types = {task: task_type_of(task, known) for task in per_task.columns}
    table = pd.DataFrame(index=per_task.index)
    table[RANK] = borda_rank(per_task)
    table[MEAN_TASK] = per_task.mean(axis=1, skipna=False)
    type_means = pd.DataFrame(index=per_task.index)
    for kind in sorted(set(types.values())):
        type_means[kind] = per_task[[t for t, k in types.items() if k == kind]].mean(axis=1, skipna=False)
    table[MEAN_TYPE] = type_means.mean(axis=1, skipna=False)
    table = pd.concat([table, type_means], axis=1)
    order = table.sort_values([RANK, MEAN_TASK], ascending=[True, False]).index
    return Leaderboard(table.loc[order], per_task.loc[order], types)
