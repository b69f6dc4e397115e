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


# ------------------------------------------------------------------------------------ pipeline parent + children
SMALL = ["training.stage1.batch_size=4", "training.stage1.steps=3", "training.stage1.warmup_steps=1",
         "training.stage1.max_document_length=48", "training.stage1.hard_negatives=2", "training.stage2.batch_size=4",
         "training.stage2.micro_batch_size=4", "training.stage2.steps=2", "training.stage2.max_document_length=48",
         "training.stage2.hard_negatives=2"]


@pytest.fixture
def records_dir(tmp_path):
    from test_training_run import make_records

    from embedpipe.data.schema import write_records

    folder = tmp_path / "mined"
    folder.mkdir()
    write_records(make_records(negatives=2), folder / "records.jsonl")
    return folder


def test_experiment_opens_in_the_model_training_view(store):
    import mlflow

    exp_id = tracking.experiment_id("embedpipe-kind")
    assert mlflow.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    mlflow.MlflowClient().set_experiment_tag(exp_id, tracking.EXPERIMENT_KIND_TAG, "genai_development")
    assert tracking.experiment_id("embedpipe-kind") == exp_id  # an existing experiment is re-filed
    assert mlflow.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tracking.ui_url("http://mlflow:5000", exp_id).endswith(f"#/experiments/{exp_id}/runs?workflowType=machine_learning")


def test_pipeline_parent_first_children_live_then_closed(store, tiny_encoder, records_dir, tmp_path):
    """What the pipeline's steps do, in order: the first opens the parent, each training job logs into its own child
    while it trains, the last step records and ends the parent with the whole run's duration."""
    import time

    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME
    from mlflow_store import PipelineStore

    from embedpipe.orchestration import publish, steps

    recipe = load_recipe(recipes_dir() / "local.yaml", SMALL + [f"pipeline.mlflow_tracking_uri={store}"])
    parent_id = publish.open_run(recipe, "full", "kfp-123", kfp_run_name="embedpipe-full-2026-12-02-01-53-20")
    assert publish.open_run(recipe, "full", "kfp-123") == parent_id  # a retried first step finds its run
    summaries = {"stage1": steps.train(recipe, "stage1", records_dir, str(tiny_encoder), tmp_path / "s1",
                                       kfp_run_id="kfp-123")}
    for variant in steps.stage2_variants(recipe):
        summaries[variant["name"]] = {"variant": variant, **steps.train(
            recipe, "stage2", records_dir, str(tmp_path / "s1"), tmp_path / variant["name"], variant=variant,
            kfp_run_id="kfp-123")}
    assert not tracking.active()
    time.sleep(0.05)
    track_started = int(time.time() * 1000)
    for variant in steps.stage2_variants(recipe):
        publish.record_training(recipe, parent_id, summaries[variant["name"]], "stage2", variant=variant)
    publish.record_training(recipe, parent_id, summaries["stage1"], "stage1")
    closed = tracking.close_pipeline_run(parent_id)

    s = PipelineStore.load(store, "embedpipe-local")
    assert s.parent.info.run_id == parent_id and s.parent.info.status == "FINISHED"
    assert s.parent.info.run_name == "local · embedpipe-full-2026-12-02-01-53-20"
    assert s.parent.data.tags[MLFLOW_SOURCE_NAME] == "embedpipe full pipeline (local)"
    assert s.parent.data.params["training.stage1.steps"] == "3"
    assert set(s.trainings) == {"stage1", "stage2/mix-a", "stage2/mix-b"} and not s.others
    s.assert_trained_live("stage1", "stage1", 3, track_started)
    s.assert_trained_live("stage2/mix-b", "stage2", 2, track_started)
    mix_b = s.training("stage2/mix-b")
    assert mix_b.info.status == "FINISHED" and mix_b.info.run_name == "stage2 · mix-b"
    assert mix_b.data.params["variant.learning_rate"] == "2e-05"
    assert "executor" not in mix_b.data.tags[MLFLOW_SOURCE_NAME]
    assert mix_b.info.end_time < track_started  # the child ended when its training did
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(mix_b.info.run_id, "training/stage2")}
    assert {"training/stage2/summary.json", "training/stage2/loss-stage2.png"} <= files
    # the parent spans the whole run: from the first step to the close, longer than the training it contains
    training_s = sum(v["seconds"] for v in summaries.values())
    assert closed["seconds"] >= training_s
    assert s.parent.info.start_time <= s.training("stage1").info.start_time


def test_cached_training_step_gets_its_child_from_the_summary(store):
    from mlflow_store import PipelineStore

    from embedpipe.orchestration import publish

    recipe = load_recipe(recipes_dir() / "local.yaml", [f"pipeline.mlflow_tracking_uri={store}"])
    parent_id = publish.open_run(recipe, "full", "kfp-cached", run_name="second")
    history = [{"step": 1, "loss": 2.0, "lr": 1e-5}, {"step": 2, "loss": 1.5, "lr": 1e-5}]
    publish.record_training(recipe, parent_id, {"final_loss": 1.5, "history": history}, "stage1")
    tracking.close_pipeline_run(parent_id)
    s = PipelineStore.load(store, "embedpipe-local")
    assert s.parent.info.run_name == "local · second"
    child = s.training("stage1")
    assert child.data.tags["embedpipe.cached"] == "true"
    assert [(m.step, m.value) for m in s.history(child, "stage1.loss")] == [(1, 2.0), (2, 1.5)]


def test_failed_training_leaves_a_failed_child_with_its_metrics(store, tiny_encoder, records_dir, tmp_path,
                                                               monkeypatch):
    from mlflow_store import PipelineStore

    from embedpipe.orchestration import publish, steps
    from embedpipe.training import run as training_run

    recipe = load_recipe(recipes_dir() / "local.yaml", SMALL + [f"pipeline.mlflow_tracking_uri={store}"])
    parent_id = publish.open_run(recipe, "full", "kfp-fail")

    def broken_export(*args, **kwargs):
        raise OSError("disk full while writing the export")

    monkeypatch.setattr(training_run, "_write_export", broken_export)
    with pytest.raises(OSError, match="disk full"):
        steps.train(recipe, "stage1", records_dir, str(tiny_encoder), tmp_path / "s1", kfp_run_id="kfp-fail")
    child = PipelineStore.load(store, "embedpipe-local").training("stage1")
    assert child.info.status == "FAILED"
    assert len(mlflow_history(child.info.run_id, "stage1.loss")) == 3  # every step it trained is there


def test_closing_fails_children_whose_step_died_and_local_runner_fails_the_parent(store):
    import mlflow
    import time

    from mlflow_store import PipelineStore

    from embedpipe.orchestration import publish

    recipe = load_recipe(recipes_dir() / "local.yaml", [f"pipeline.mlflow_tracking_uri={store}"])
    since = int(time.time() * 1000)
    parent_id = publish.open_run(recipe, "full", "kfp-killed")
    client = mlflow.MlflowClient()
    killed = client.create_run(client.get_run(parent_id).info.experiment_id, run_name="stage1",
                               tags={"mlflow.parentRunId": parent_id, tracking.KIND_TAG: "training",
                                     tracking.JOB_TAG: "stage1"})  # a step SIGKILLed mid-training: still RUNNING
    assert tracking.fail_open_pipeline_runs("embedpipe-local", since, "RuntimeError: step stage 1 failed") == [parent_id]
    s = PipelineStore.load(store, "embedpipe-local")
    assert s.parent.info.status == "FAILED" and "stage 1 failed" in s.parent.data.tags["embedpipe.failure"]
    assert s.training("stage1").info.status == "FAILED" and killed.info.run_id == s.training("stage1").info.run_id


def mlflow_history(run_id: str, metric: str) -> list:
    import mlflow

    return mlflow.MlflowClient().get_metric_history(run_id, metric)
