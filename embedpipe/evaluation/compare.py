"""``embedpipe compare``: MLflow runs side by side (the parameters that differ, the dev and test scores, per ablation
axis what it changes, merged vs the best single checkpoint, Borda among the runs) and a plot of one score per run.

It reads what embedpipe/tracking.py records (tags, ``<role>_<metric>`` metrics) and ranks with the leaderboard's
Borda, so it sits above both: tracking stays the bottom layer every area logs through.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from embedpipe.evaluation.leaderboard import borda_rank
from embedpipe.tracking import KIND_TAG, STAGE_TAG, TrackingError


def runs_frame(experiment_name: str, parent_run_id: str | None = None, include_children: bool = False):
    """The experiment's runs as a DataFrame (params.*, metrics.*, tags.*); children of one parent when given."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise TrackingError(f"no MLflow experiment named {experiment_name!r} at {mlflow.get_tracking_uri()}")
    filter_string = f"tags.mlflow.parentRunId = '{parent_run_id}'" if parent_run_id else ""
    frame = mlflow.search_runs([experiment.experiment_id], filter_string=filter_string, order_by=["start_time ASC"])
    if not parent_run_id and not include_children and "tags.mlflow.parentRunId" in frame:
        frame = frame[frame["tags.mlflow.parentRunId"].isna()]
    return frame.reset_index(drop=True)


def differing_params(frame) -> list[str]:
    """Parameter columns whose values are not all the same across the runs."""
    cols = [c for c in frame.columns if c.startswith("params.")]
    return [c for c in cols if frame[c].astype(str).nunique(dropna=False) > 1]


SCORE_ROLES = ("dev", "test")  # evaluation logs <role>_<metric>: dev tasks (selection) and test tasks (the report)
NOT_TASK_METRICS = {"mean_task", "mean_task_type", "borda_rank", "best_single_mean_task", "merge_gain"}
MERGED_LABEL = "merged"


def _value(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _kind_of(row) -> str:
    """cell | stage1 | stage2 | merged | run: what a compared run is (tags, else its ablation params). A training
    job of an ablation carries its cells' axes as params too; its stage tag says what it is."""
    kind = _value(row.get(f"tags.{KIND_TAG}"))
    stage = _value(row.get(f"tags.{STAGE_TAG}"))
    if kind == "cell" or stage == "cell":
        return "cell"
    if stage in ("stage1", "stage2"):
        return stage
    if any(_value(row.get(c)) is not None for c in row.index if str(c).startswith("params.ablation.")):
        return "cell"
    return "run"


def default_metrics(columns) -> list[str]:
    """The headline scores present: dev and test Mean(Task) / Mean(TaskType), the merge gain, the older names."""
    present = [c[len("metrics."):] for c in columns if c.startswith("metrics.")]
    wanted = [f"{role}_{name}" for role in SCORE_ROLES for name in ("mean_task", "mean_task_type")]
    wanted += ["dev_best_single_mean_task", "dev_merge_gain", "mean_task", "mean_task_type", "eval.mean_task"]
    chosen = [m for m in wanted if m in present]
    chosen += [m for m in present if m.startswith("borda") and m not in chosen]
    return chosen or present[:6]


def plot_metric(metrics: list[str]) -> str | None:
    """The metric the plot shows: the first of dev, test, then any Mean(Task) among ``metrics``."""
    for name in ("dev_mean_task", "test_mean_task", "mean_task", "eval.mean_task"):
        if name in metrics:
            return name
    return metrics[0] if metrics else None


def borda_among(frame, names: list[str]) -> dict[str, dict[str, int]]:
    """Per role, the Borda rank of the runs over that role's per-task scores (``<role>_<Task>`` metrics), computed as
    mteb's leaderboard does (embedpipe.evaluation.leaderboard.borda_rank); runs without scores are left out."""
    import pandas as pd

    out: dict[str, dict[str, int]] = {}
    for role in SCORE_ROLES:
        prefix = f"metrics.{role}_"
        tasks = [c for c in frame.columns if c.startswith(prefix) and c[len(prefix):] not in NOT_TASK_METRICS
                 and not c[len(prefix):].startswith("type.")]
        if not tasks:
            continue
        table = pd.DataFrame(frame[tasks].to_numpy(dtype=float), index=names, columns=[t[len(prefix):] for t in tasks])
        table = table.dropna(how="all")
        if len(table) >= 2:
            out[role] = {name: int(rank) for name, rank in borda_rank(table).items()}
    return out


def merge_gains(frame, names: list[str], kinds: list[str]) -> list[dict]:
    """Merged vs the best single checkpoint, per role: an ablation cell's own ``dev_best_single_mean_task`` when it
    logged one, else the merged model's score against the best stage-2 variant's among the compared runs."""
    out = []
    for i, kind in enumerate(kinds):
        row = frame.iloc[i]
        best = _value(row.get("metrics.dev_best_single_mean_task"))
        merged = _value(row.get("metrics.dev_mean_task"))
        if kind == "cell" and best is not None and merged is not None:
            out.append({"run": names[i], "role": "dev", "merged": float(merged), "best_single": float(best),
                        "best_single_run": None, "gain": float(merged) - float(best)})
    for role in SCORE_ROLES:
        column = f"metrics.{role}_mean_task"
        if column not in frame or MERGED_LABEL not in kinds:
            continue
        merged = _value(frame[column].iloc[kinds.index(MERGED_LABEL)])
        singles = [(float(frame[column].iloc[i]), names[i]) for i, k in enumerate(kinds)
                   if k == "stage2" and _value(frame[column].iloc[i]) is not None]
        if merged is not None and singles:
            best, best_name = max(singles)
            out.append({"run": names[kinds.index(MERGED_LABEL)], "role": role, "merged": float(merged),
                        "best_single": best, "best_single_run": best_name, "gain": float(merged) - best})
    return out


def axes_summary(frame, names: list[str], kinds: list[str], metric: str | None) -> dict[str, dict]:
    """Per ablation axis (``params.ablation.<axis>`` of the cells): each value's cells and mean score, and the recipe
    parameters that the axis changes (those that differ between its values and are one value within each)."""
    cells = [i for i, k in enumerate(kinds) if k == "cell"]
    if not cells:
        return {}
    sub = frame.iloc[cells]
    column = f"metrics.{metric}" if metric else None
    out = {}
    for axis_col in sorted(c for c in frame.columns if c.startswith("params.ablation.")):
        values = sub[axis_col].astype(str)
        if values.nunique() < 2:
            continue
        changes = []
        for c in differing_params(sub):
            if c.startswith("params.ablation.") or c == axis_col:
                continue
            per_value = sub.groupby(values)[c].agg(lambda v: v.astype(str).nunique())
            if (per_value == 1).all() and sub[c].astype(str).nunique() > 1:
                changes.append(c[len("params."):])
        seeds = sub["params.ablation.seed"].astype(str) if "params.ablation.seed" in sub and axis_col != \
            "params.ablation.seed" else None
        groups = {}
        for value in dict.fromkeys(values):
            rows = [cells[j] for j, v in enumerate(values) if v == value]
            scored = {r: float(frame[column].iloc[r]) for r in rows
                      if column and column in frame and _value(frame[column].iloc[r]) is not None}
            scores = list(scored.values())
            per_seed: dict[str, float] = {}
            if seeds is not None:  # the value's mean under each seed: how far the seeds move it
                for seed in dict.fromkeys(seeds):
                    mine = [scored[r] for r in scored if seeds.iloc[cells.index(r)] == seed]
                    if mine:
                        per_seed[seed] = sum(mine) / len(mine)
            groups[value] = {"runs": [names[r] for r in rows],
                             "mean": sum(scores) / len(scores) if scores else None,
                             "best": max(scores) if scores else None,
                             "per_seed": per_seed,
                             "seed_spread": max(per_seed.values()) - min(per_seed.values()) if per_seed else None}
        out[axis_col[len("params.ablation."):]] = {"changes": changes, "values": groups}
    return out


def compare_runs(experiment_name: str, out_png: str | os.PathLike | None = None, parent_run_id: str | None = None,
                 metrics: list[str] | None = None, include_children: bool = False) -> dict:
    """Runs of an experiment side by side: the differing params, the chosen (default: the dev and test headline)
    metrics, per ablation axis what it changes and scores, merged vs best single, and Borda among the runs.

    With a parent: its children (a pipeline's training jobs; an ablation's cells, whose scores include those of its
    training jobs, which are left out and counted) and, when the parent holds scores, the merged model (the parent
    itself). Returns ``{"runs", "run_ids", "kinds", "params", "metrics", "plot_metric", "axes", "merge", "borda",
    "left_out_training_runs", "plot"}``; ``plot`` is the PNG (one bar per run for the plot metric) or None.
    """
    import pandas as pd

    frame = runs_frame(experiment_name, parent_run_id, include_children)
    if parent_run_id:
        parent = runs_frame(experiment_name)
        parent = parent[parent["run_id"] == parent_run_id]
        if not parent.empty and any(_value(parent[c].iloc[0]) is not None for c in parent.columns
                                    if c.startswith("metrics.") and c[len("metrics."):] in default_metrics(parent.columns)
                                    and "mean_task" in c):
            frame = pd.concat([frame, parent], ignore_index=True)
    if frame.empty:
        raise TrackingError(f"experiment {experiment_name!r} has no runs to compare"
                            + (f" under parent run {parent_run_id}" if parent_run_id else ""))
    kinds = [MERGED_LABEL if parent_run_id and run_id == parent_run_id else _kind_of(row)
             for run_id, (_, row) in zip(frame["run_id"], frame.iterrows())]
    left_out = 0
    if parent_run_id and "cell" in kinds:  # an ablation: its cells hold every score (a one-variant cell's is its
        keep = [i for i, k in enumerate(kinds) if k == "cell"]  # stage-2 job's); the jobs keep their own runs
        left_out = len(kinds) - len(keep)
        frame, kinds = frame.iloc[keep].reset_index(drop=True), [kinds[i] for i in keep]
    names = [str(n) if isinstance(n, str) and n else str(r)[:8]
             for n, r in zip(frame.get("tags.mlflow.runName", frame["run_id"]), frame["run_id"])]
    if metrics:
        missing = [m for m in metrics if f"metrics.{m}" not in frame]
        if len(missing) == len(metrics):
            have = sorted(c[len("metrics."):] for c in frame.columns if c.startswith("metrics."))
            raise TrackingError(f"none of the metrics {metrics} was logged by these runs; they have: "
                                f"{', '.join(have[:40]) or 'no metrics'}")
        chosen = [m for m in metrics if m not in missing]
    else:
        chosen = default_metrics(frame.columns)
    metric = chosen[0] if metrics else plot_metric(chosen)
    result = {
        "runs": names,
        "run_ids": list(frame["run_id"]),
        "kinds": kinds,
        "params": {c[len("params."):]: [None if _value(v) is None else str(v) for v in frame[c]]
                   for c in differing_params(frame)},
        "metrics": {m: [None if _value(v) is None else float(v) for v in frame[f"metrics.{m}"]] for m in chosen},
        "plot_metric": metric,
        "axes": axes_summary(frame, names, kinds, metric),
        "merge": merge_gains(frame, names, kinds),
        "borda": borda_among(frame, names),
        "left_out_training_runs": left_out,
        "plot": None,
    }
    if out_png and metric and any(v is not None for v in result["metrics"][metric]):
        result["plot"] = str(plot_scores(result, out_png, title=experiment_name))
    return result


KIND_COLORS = {"cell": "#4C72B0", "stage2": "#DD8452", "stage1": "#8C8C8C", MERGED_LABEL: "#55A868", "run": "#4C72B0"}
KIND_LABELS = {"cell": "ablation cell", "stage2": "stage-2 variant", "stage1": "stage 1", MERGED_LABEL: "merged model",
               "run": "run"}


def score_figure(comparison: dict, metric: str | None = None, title: str = ""):
    """The comparison as a matplotlib Figure: one horizontal bar per run (that has the metric) for ``metric``, its
    value at the bar's end, bars coloured by kind with the legend outside the plot, labels and title inside the
    figure (the figure grows to fit the longest run name; the title wraps)."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = metric or comparison.get("plot_metric") or next(iter(comparison["metrics"]))
    values = comparison["metrics"][metric]
    kinds = comparison.get("kinds") or ["run"] * len(values)
    rows = [(n, v, k) for n, v, k in zip(comparison["runs"], values, kinds) if v is not None]
    longest = max((len(n) for n, _, _ in rows), default=10)
    width = min(22.0, max(8.0, 5.5 + 0.075 * longest))
    fig = Figure(figsize=(width, 1.9 + 0.42 * max(1, len(rows))), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # no display needed
    ax = fig.add_subplot()
    y = list(range(len(rows)))[::-1]  # the first run at the top
    bars = ax.barh(y, [v for _, v, _ in rows], color=[KIND_COLORS.get(k, "#4C72B0") for _, _, k in rows], height=0.6)
    ax.set_yticks(y, [n for n, _, _ in rows], fontsize=9)
    ax.bar_label(bars, labels=[f"{v:.4f}" for _, v, _ in rows], padding=3, fontsize=8)
    high = max((v for _, v, _ in rows), default=1.0)
    low = min((v for _, v, _ in rows), default=0.0)
    ax.set_xlim(min(0.0, low * 1.25), (high if high > 0 else 1.0) * 1.22)
    ax.set_xlabel(metric)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    heading = f"{metric} per run" + (f": {title}" if title else "")
    # over the whole figure, not the axes (which long run names push right), wrapped to the figure's width
    fig.suptitle("\n".join(textwrap.wrap(heading, max(30, int(width * 9)))), fontsize=11)
    seen = dict.fromkeys(k for _, _, k in rows)
    if len(seen) > 1:
        import matplotlib.patches as mpatches

        handles = [mpatches.Patch(color=KIND_COLORS.get(k, "#4C72B0"), label=KIND_LABELS.get(k, k)) for k in seen]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


def plot_scores(comparison: dict, path: str | os.PathLike, title: str = "", metric: str | None = None) -> Path:
    """Write :func:`score_figure` as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    score_figure(comparison, metric, title).savefig(path)
    return path


SIDE_BY_SIDE_RUNS = 6  # up to this many runs a column each; more, a row each (a column each would fold to nothing)


def _param_groups(params: dict[str, list]) -> dict[str, list]:
    """Parameters (or metrics) with the same values on every run shown once, their names joined (the root seed and
    the seed of every area an ablation's seed axis sets; Mean(Task) and Mean(TaskType) over one task)."""
    groups: dict[tuple, list[str]] = {}
    for key, values in params.items():
        groups.setdefault(tuple(values), []).append(key)
    return {" = ".join(keys): list(values) for values, keys in groups.items()}


def comparison_table(comparison: dict):
    """A rich Table of the runs: the parameters that differ, the metrics, Borda per role; a column per run (a row
    per parameter) for a few runs, a row per run (a column per parameter) for more."""
    from rich.table import Table

    runs = comparison["runs"]
    params = _param_groups(comparison["params"])
    borda = comparison.get("borda") or {}
    fmt = {key: ["-" if v is None else v for v in values] for key, values in params.items()}
    scores = {key: ["-" if v is None else f"{v:.4f}" for v in values]
              for key, values in _param_groups(comparison["metrics"]).items()}  # Mean(TaskType) = Mean(Task) on 1 task
    ranks = {f"Borda rank ({role} tasks)": [str(r.get(n, "-")) for n in runs] for role, r in borda.items()}
    if len(runs) > SIDE_BY_SIDE_RUNS:
        table = Table(title=f"{len(runs)} runs (parameters that differ, then scores)")
        table.add_column("run", style="bold", overflow="fold")
        for key in fmt:
            table.add_column(key, overflow="fold")
        for key in scores:
            table.add_column(key, justify="right", style="cyan")
        for key in ranks:
            table.add_column(key, justify="right", style="magenta")
        columns = [*fmt.values(), *scores.values(), *ranks.values()]
        for i, name in enumerate(runs):
            table.add_row(name, *[column[i] for column in columns])
        return table
    table = Table(title="runs side by side (parameters that differ, then scores)")
    table.add_column("", style="bold")
    for name in runs:
        table.add_column(name, overflow="fold")
    for key, values in fmt.items():
        table.add_row(key, *values)
    if fmt and scores:
        table.add_section()
    for key, values in scores.items():
        table.add_row(key, *values, style="cyan")
    for key, values in ranks.items():
        table.add_row(key, *values, style="magenta")
    return table


def comparison_tables(comparison: dict) -> list:
    """Everything ``embedpipe compare`` prints: the runs' table, one table per ablation axis (its cells, mean and
    best score, with a seed axis each value's mean per seed and their spread), merged vs best single, and a line
    on the training runs an ablation's cells stand for."""
    from rich.table import Table

    out = [comparison_table(comparison)]
    metric = comparison.get("plot_metric") or "score"
    for axis, info in (comparison.get("axes") or {}).items():
        changes = ", ".join(info["changes"]) or "no recipe parameter (the grid's own setting)"
        table = Table(title=f"axis {axis!r}: changes {changes}")
        table.add_column(axis, style="bold")
        table.add_column("cells", justify="right")
        table.add_column(f"mean {metric}", justify="right")
        table.add_column(f"best {metric}", justify="right")
        seeded = any(group.get("per_seed") for group in info["values"].values())
        if seeded:
            table.add_column("mean per seed", overflow="fold")
            table.add_column("seed spread", justify="right")
        ranked = sorted(info["values"].items(), key=lambda kv: -(kv[1]["mean"] if kv[1]["mean"] is not None else -1e9))
        for value, group in ranked:
            row = [value, str(len(group["runs"])), "-" if group["mean"] is None else f"{group['mean']:.4f}",
                   "-" if group["best"] is None else f"{group['best']:.4f}"]
            if seeded:
                row += [", ".join(f"{seed}: {mean:.4f}" for seed, mean in group["per_seed"].items()) or "-",
                        "-" if group["seed_spread"] is None else f"{group['seed_spread']:.4f}"]
            table.add_row(*row)
        out.append(table)
    if comparison.get("merge"):
        at_least = sum(m["gain"] >= 0 for m in comparison["merge"])
        table = Table(title=f"merged vs best single checkpoint (merged at least as good in {at_least} of "
                            f"{len(comparison['merge'])})")
        for column in ("run", "role", "merged", "best single", "gain"):
            table.add_column(column, justify="left" if column in ("run", "role") else "right")
        for m in comparison["merge"]:
            best = f"{m['best_single']:.4f}" + (f" ({m['best_single_run']})" if m.get("best_single_run") else "")
            table.add_row(m["run"], m["role"], f"{m['merged']:.4f}", best, f"{m['gain']:+.4f}",
                          style="green" if m["gain"] >= 0 else "red")
        out.append(table)
    if comparison.get("left_out_training_runs"):
        out.append(f"{comparison['left_out_training_runs']} training runs of this ablation are not listed: a "
                   "one-variant cell holds its stage-2 job's dev scores (the jobs' own runs keep their loss curves)")
    return out
