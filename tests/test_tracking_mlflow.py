"""embedpipe.tracking on a real MLflow SQLite store: recipe params, parent/child runs, scores, loss curves, the
model registry, and the compare output (table with only differing params + a PNG)."""

from __future__ import annotations

import json

import pytest

from embedpipe import tracking
from embedpipe.recipe import load_recipe, recipes_dir


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = tracking.setup(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # mlflow's default artifact root for a SQLite store is ./mlruns
    yield uri
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def test_parent_and_child_runs_and_compare(store, tmp_path):
    import mlflow

    recipe = load_recipe(recipes_dir() / "local.yaml")
    with tracking.recipe_run(recipe, run_name="ablation") as parent:
        for name, lr, score in (("mix-a", 1e-5, 0.41), ("mix-b", 2e-5, 0.47)):
            with tracking.recipe_run(recipe, run_name=name, parent_run_id=parent.info.run_id,
                                     params={"variant.learning_rate": lr}):
                tracking.log_scores({"mean_task": score, "mean_task_type": score - 0.01,
                                     "tasks": {"pydoc-heldout": {"ndcg_at_10": score}}, "ok": True})
                tracking.log_training({"steps": 8, "final_loss": 1.5}, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
                                      "stage2")
    experiment = mlflow.get_experiment_by_name("embedpipe-local")
    children = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    # the recipe flattened into params
    assert set(children["params.training.stage1.learning_rate"]) == {str(recipe.training.stage1.learning_rate)}
    assert set(children["metrics.tasks.pydoc-heldout.ndcg_at_10"]) == {0.41, 0.47}
    child_id = children["run_id"][0]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(child_id, "training/stage2")}
    assert {"training/stage2/loss-stage2.png", "training/stage2/summary.json"} <= artifacts
    losses = mlflow.MlflowClient().get_metric_history(child_id, "stage2.loss")
    assert [(m.step, m.value) for m in losses] == [(1, 2.0), (2, 1.5)]

    comparison = tracking.compare_runs("embedpipe-local", out_png=tmp_path / "cmp.png", parent_run_id=parent.info.run_id)
    assert comparison["runs"] == ["mix-a", "mix-b"]
    assert comparison["params"] == {"variant.learning_rate": ["1e-05", "2e-05"]}  # only what differs
    assert comparison["metrics"]["mean_task"] == [0.41, 0.47]
    png = (tmp_path / "cmp.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000

    from rich.console import Console

    console = Console(record=True, width=140)
    console.print(tracking.comparison_table(comparison))
    text = console.export_text()
    assert "variant.learning_rate" in text and "0.4700" in text and "mix-b" in text
    assert "training.stage1.learning_rate" not in text  # identical params are left out

    top = tracking.compare_runs("embedpipe-local")  # top-level runs only: the parent
    assert top["runs"] == ["ablation"]


def test_model_logged_as_pyfunc_and_registered(store, tiny_encoder):
    import mlflow
    import numpy as np

    from embedpipe.encoder import Encoder

    recipe = load_recipe(recipes_dir() / "local.yaml")
    with tracking.recipe_run(recipe, run_name="full"):
        out = tracking.log_and_register_model(tiny_encoder, "embedpipe-local-test")
    assert out["version"] == "1"
    loaded = mlflow.pyfunc.load_model("models:/embedpipe-local-test/1")
    vectors = np.asarray(loaded.predict(["what is a list comprehension"]))
    expected = Encoder.from_pretrained(tiny_encoder).encode(["what is a list comprehension"])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_errors_name_the_store(tmp_path, store):
    with pytest.raises(tracking.TrackingError, match="no MLflow experiment named 'nope'"):
        tracking.compare_runs("nope")
    with pytest.raises(tracking.TrackingError, match="MLflow server http://127.0.0.1:9 is not reachable"):
        tracking.check_tracking_uri("http://127.0.0.1:9", timeout=2)
    tracking.check_tracking_uri(f"sqlite:///{tmp_path / 'sub' / 'db.sqlite'}")
    assert (tmp_path / "sub").is_dir()
    assert tracking.resolve_tracking_uri("sqlite:///.embedpipe/mlflow.db", tmp_path) == \
        f"sqlite:///{tmp_path / '.embedpipe' / 'mlflow.db'}"
    assert tracking.resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_numeric_metrics_flattens_and_skips_non_numbers():
    assert tracking.numeric_metrics({"a": 1, "b": {"c": 0.5, "d": "x", "e": True, "f": float("nan")}}) == \
        {"a": 1.0, "b.c": 0.5}


def test_loss_history_reads_what_training_writes(tmp_path):
    from embedpipe.orchestration.publish import TRAINING_SUMMARY, loss_history

    history = [{"step": 0, "loss": 2.0, "lr": 0.0}, {"step": 1, "loss": 1.5, "lr": 1e-5}]
    assert loss_history({"history": history}) == history
    (tmp_path / TRAINING_SUMMARY).write_text(json.dumps({"steps": 2, "history": history}))
    assert loss_history({"steps": 2}, str(tmp_path)) == history  # the summary beside the export
    assert loss_history({"steps": 2}) == [] and loss_history({"log": history}) == []  # no guessed keys
