"""Borda rank and means checked against mteb's own leaderboard functions; result folders, table, plot, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from embedpipe.evaluation.leaderboard import (
    MEAN_TASK,
    MEAN_TYPE,
    RANK,
    Results,
    borda_rank,
    build_leaderboard,
    load_results_folder,
)

NAN = math.nan
# ties (m1 = m2 on T1, m3 = m4 on T2), missing tasks (m4 lacks T3, m5 has only T4)
SCORES = {
    "org/m1": {"T1": 0.80, "T2": 0.50, "T3": 0.30, "T4": 0.70},
    "org/m2": {"T1": 0.80, "T2": 0.60, "T3": 0.20, "T4": 0.60},
    "org/m3": {"T1": 0.70, "T2": 0.40, "T3": 0.40, "T4": 0.65},
    "org/m4": {"T1": 0.60, "T2": 0.40, "T3": NAN, "T4": 0.90},
    "org/m5": {"T1": NAN, "T2": NAN, "T3": NAN, "T4": 0.95},
}
TYPES = {"T1": "Retrieval", "T2": "Retrieval", "T3": "STS", "T4": "Classification"}


def mteb_borda(frame: pd.DataFrame) -> dict[str, int]:
    """mteb's wide-form Borda (``_get_borda_rank``) on the same table."""
    from mteb.benchmarks._create_table import _get_borda_rank

    wide = pl.from_pandas(frame.reset_index(names="model"), nan_to_null=True)
    ranked = wide.select("model", _get_borda_rank(list(frame.columns)).alias("rank"))
    return dict(ranked.iter_rows())


def mteb_borda_long(frame: pd.DataFrame) -> dict[str, int]:
    """mteb's long-form Borda (``_borda_rank_from_long``), which the leaderboard builders use."""
    from mteb.benchmarks._create_table import _borda_rank_from_long

    long = frame.reset_index(names="model_name").melt(id_vars="model_name", var_name="task_name", value_name="score")
    long = pl.from_pandas(long.dropna())
    return dict(_borda_rank_from_long(long, n_models=len(frame)).iter_rows())


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3])
def test_borda_rank_equals_mteb_with_ties_and_missing_tasks(seed):
    frame = pd.DataFrame.from_dict(SCORES, orient="index")
    if seed is not None:  # random tables with many ties (scores on a coarse grid) and holes
        rng = np.random.default_rng(seed)
        values = rng.integers(0, 4, size=(7, 6)).astype(float) / 4
        values[rng.random(values.shape) < 0.25] = np.nan
        values[0, :] = 0.5  # no model may be all-missing for the comparison with the wide form
        frame = pd.DataFrame(values, index=[f"m{i}" for i in range(7)], columns=[f"T{j}" for j in range(6)])
        frame = frame[frame.notna().any(axis=1)]
    ours = borda_rank(frame).to_dict()
    assert ours == mteb_borda(frame)
    assert ours == mteb_borda_long(frame)


def test_borda_fixed_example_by_hand():
    ranks = borda_rank(pd.DataFrame.from_dict(SCORES, orient="index")).to_dict()
    # points (n=5): m1 3.5+3+3+2=11.5, m2 3.5+4+2+0=9.5, m3 2+1.5+4+1=8.5, m4 1+1.5+0+3=5.5, m5 0+0+0+4=4
    assert ranks == {"org/m1": 1, "org/m2": 2, "org/m3": 3, "org/m4": 4, "org/m5": 5}


def test_means_follow_mteb_missing_rules():
    board = build_leaderboard(Results(SCORES, TYPES))
    table = board.table
    assert table.loc["org/m1", MEAN_TASK] == pytest.approx(np.mean([0.8, 0.5, 0.3, 0.7]))
    assert table.loc["org/m1", "Retrieval"] == pytest.approx(0.65)
    assert table.loc["org/m1", MEAN_TYPE] == pytest.approx(np.mean([0.65, 0.3, 0.7]))
    assert math.isnan(table.loc["org/m4", MEAN_TASK])  # a missing task makes Mean(Task) missing
    assert math.isnan(table.loc["org/m4", "STS"]) and not math.isnan(table.loc["org/m4", "Retrieval"])
    assert math.isnan(table.loc["org/m4", MEAN_TYPE])
    assert list(table.index) == ["org/m1", "org/m2", "org/m3", "org/m4", "org/m5"]
    assert board.rank_of("org/m3") == 3 and board.rank_of("nobody") is None
    records = board.to_records()
    assert records[3]["Mean (Task)"] is None and records[0][RANK] == 1
    assert records[4]["tasks"] == {"T4": 0.95}


def write_result(root: Path, model: str, revision: str, task: str, score: float, with_meta: bool = True) -> None:
    folder = root / model.replace("/", "__") / revision
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.json").write_text(json.dumps({
        "dataset_revision": "r", "task_name": task, "mteb_version": "2.26.24", "evaluation_time": 1.0,
        "scores": {"test": [{"main_score": score, "hf_subset": "default", "languages": ["eng-Latn"]},
                            {"main_score": score + 0.1, "hf_subset": "fra", "languages": ["fra-Latn"]}]}}))
    if with_meta:
        (folder / "model_meta.json").write_text(json.dumps({"name": model, "revision": revision}))


def test_load_results_folder_reads_mteb_layout(tmp_path):
    for model, scores in SCORES.items():
        for task, score in scores.items():
            if not math.isnan(score):
                write_result(tmp_path / "results", model, "abc", task, score, with_meta=model != "org/m2")
    (tmp_path / "task_types.json").write_text(json.dumps(TYPES))
    (tmp_path / "notes.json").write_text(json.dumps({"something": "else"}))
    results = load_results_folder(tmp_path)
    assert set(results.scores) == set(SCORES)
    assert results.scores["org/m1"]["T1"] == pytest.approx(0.85)  # mean over the task's subsets
    assert results.task_types == TYPES
    board = build_leaderboard(results)
    assert board.rank_of("org/m1") == 1
    (tmp_path / "results" / "org__m1" / "abc" / "T9.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"T9\.json: invalid JSON"):
        load_results_folder(tmp_path)


def test_table_plot_and_cli(tmp_path):
    from rich.console import Console
    from typer.testing import CliRunner

    from embedpipe.cli import app

    board = build_leaderboard(Results(SCORES, TYPES))
    console = Console(record=True, width=160)
    console.print(board.rich_table())
    text = console.export_text()
    assert "org/m1" in text and "Rank (Borda)" in text and "65.00" in text
    png = board.plot(tmp_path / "board.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for model, scores in SCORES.items():
        for task, score in scores.items():
            if not math.isnan(score):
                write_result(tmp_path / "res", model, "abc", task, score)
    (tmp_path / "res" / "task_types.json").write_text(json.dumps(TYPES))
    result = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "res"), "--plot", str(tmp_path / "cli.png"),
                                      "--json", str(tmp_path / "board.json")])
    assert result.exit_code == 0, result.output
    assert "org/m1" in result.output
    assert (tmp_path / "cli.png").is_file()
    assert [r["model"] for r in json.loads((tmp_path / "board.json").read_text())][0] == "org/m1"
    missing = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not" in missing.output and "exist" in missing.output
