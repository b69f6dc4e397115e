"""embedpipe.tracking on a real MLflow SQLite store: recipe params, parent/child runs, scores, loss curves, the
model registry, and the compare output (table with only differing params + a PNG)."""

from __future__ import annotations

import json

import pytest

from embedpipe import tracking
from embedpipe.evaluation import compare
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

    comparison = compare.compare_runs("embedpipe-local", out_png=tmp_path / "cmp.png", parent_run_id=parent.info.run_id)
    assert comparison["runs"] == ["mix-a", "mix-b"]
    assert comparison["params"] == {"variant.learning_rate": ["1e-05", "2e-05"]}  # only what differs
    assert comparison["metrics"]["mean_task"] == [0.41, 0.47]
    png = (tmp_path / "cmp.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000

    from rich.console import Console

    console = Console(record=True, width=140)
    console.print(compare.comparison_table(comparison))
    text = console.export_text()
    assert "variant.learning_rate" in text and "0.4700" in text and "mix-b" in text
    assert "training.stage1.learning_rate" not in text  # identical params are left out

    top = compare.compare_runs("embedpipe-local")  # top-level runs only: the parent
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
        compare.compare_runs("nope")
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
                                       kfp_run_id="kfp-123").model_dump()}
    for variant in steps.stage2_variants(recipe):
        summaries[variant["name"]] = {**steps.train(
            recipe, "stage2", records_dir, str(tmp_path / "s1"), tmp_path / variant["name"], variant=variant,
            kfp_run_id="kfp-123").model_dump(), "variant": variant}
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
    assert mix_b.data.metrics["stage2.records"] > 0 and "stage2.seconds" in mix_b.data.metrics  # summary figures
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
    tracking.log_metrics_to(child.info.run_id, {"dev_mean_task": 0.3, "dev_nan": float("nan")})  # scores added later
    again = PipelineStore.load(store, "embedpipe-local").training("stage1")
    assert again.data.metrics["dev_mean_task"] == 0.3 and "dev_nan" not in again.data.metrics
    assert (again.info.status, again.info.end_time) == (child.info.status, child.info.end_time)


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
    assert tracking.fail_pipeline_runs_since("embedpipe-local", since, "RuntimeError: step stage 1 failed") == [parent_id]
    s = PipelineStore.load(store, "embedpipe-local")
    assert s.parent.info.status == "FAILED" and "stage 1 failed" in s.parent.data.tags["embedpipe.failure"]
    assert s.training("stage1").info.status == "FAILED" and killed.info.run_id == s.training("stage1").info.run_id


def mlflow_history(run_id: str, metric: str) -> list:
    import mlflow

    return mlflow.MlflowClient().get_metric_history(run_id, metric)


# ------------------------------------------------------------------------------------------------------ compare
def ablation_store(recipe, seeds=(None,)):
    """An ablation parent as the pipeline leaves it: cells (axes as params, dev per-task scores, merge gain), and
    per (loss, seed) its stage-1 job and stage-2 jobs with dev scores, carrying the axes but the merge set (as
    publish.record_ablation logs them); the loss axis changes training.loss, the merge axis no recipe param. With
    ``seeds``, every cell once per seed (the seed adds 0.01 x its index to each score; it changes the root seed)."""
    import mlflow

    from embedpipe.orchestration import publish

    parent_id = publish.open_run(recipe, "ablation", "kfp-grid", run_name="grid")
    cells = [  # loss, merge set, dev scores on two tasks, best single
        ("hard_negative_infonce", "mix-a+mix-b", (0.30, 0.50), 0.38),
        ("hard_negative_infonce", "mix-a", (0.34, 0.40), None),
        ("in_batch", "mix-a+mix-b", (0.20, 0.30), 0.27),
        ("in_batch", "mix-a", (0.26, 0.26), None),
    ]
    with mlflow.start_run(run_id=parent_id):
        for index, seed in enumerate(seeds):
            shift = 0.01 * index
            axes_of_seed = {} if seed is None else {"ablation.seed": str(seed), "seed": str(seed)}
            suffix = "" if seed is None else f",seed={seed}"
            for loss in dict.fromkeys(c[0] for c in cells):  # the training jobs the cells stand for
                jobs = (("stage1", None), ("stage2", (0.34 + shift, 0.40 + shift)))
                for stage, dev in jobs:
                    job = f"stage1-{loss}{suffix}/{stage}" if stage == "stage1" else f"stage2-{loss}{suffix}/stage2/mix-a"
                    with tracking.recipe_run(recipe, run_name=job, parent_run_id=parent_id,
                                             tags={tracking.KIND_TAG: "training", tracking.JOB_TAG: job,
                                                   tracking.STAGE_TAG: stage},
                                             params={"ablation.loss": loss, "ablation.sdg_mix": "recipe",
                                                     "training.loss": loss, **axes_of_seed}):
                        if dev:
                            tracking.log_metrics({"dev_PydocRetrieval": dev[0], "dev_PydocSTS": dev[1],
                                                  "dev_mean_task": sum(dev) / 2})
            for loss, merge_set, (a, b), best in cells:
                a, b, best = a + shift, b + shift, None if best is None else best + shift
                name = f"loss={loss},sdg=recipe,merge={merge_set}{suffix}"
                with tracking.recipe_run(recipe, run_name=name, parent_run_id=parent_id,
                                         tags={tracking.KIND_TAG: "cell", tracking.CELL_TAG: name},
                                         params={"ablation.loss": loss, "ablation.merge_set": merge_set,
                                                 "ablation.sdg_mix": "recipe", "training.loss": loss,
                                                 **axes_of_seed}):
                    metrics = {"dev_PydocRetrieval": a, "dev_PydocSTS": b, "dev_mean_task": (a + b) / 2,
                               "test_mean_task": (a + b) / 2 - 0.01}
                    if best is not None:
                        metrics.update(dev_best_single_mean_task=best, dev_merge_gain=(a + b) / 2 - best)
                    tracking.log_metrics(metrics)
    tracking.close_pipeline_run(parent_id)
    return parent_id


def text_inside_figure_and_legend_off_the_bars(fig) -> None:
    """Every visible text lies inside the figure; the legend (if any) overlaps neither a bar nor the plot area."""
    import matplotlib.patches as mpatches
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    ax = fig.axes[0]
    hidden = set()  # tick labels of ticks outside the view limits exist but are not drawn
    for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        for tick in axis.get_major_ticks():
            if not min(low, high) - 1e-9 <= tick.get_loc() <= max(low, high) + 1e-9:
                hidden.update({id(tick.label1), id(tick.label2)})
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]
    assert texts
    for t in texts:
        e = t.get_window_extent(renderer)
        assert e.x0 >= box.x0 - 1 and e.y0 >= box.y0 - 1 and e.x1 <= box.x1 + 1 and e.y1 <= box.y1 + 1, \
            f"text {t.get_text()!r} at {e} leaves the figure {box}"
    bars = [p for p in ax.patches if isinstance(p, mpatches.Rectangle)]
    for legend in fig.legends + ([ax.get_legend()] if ax.get_legend() else []):
        lb = legend.get_window_extent(renderer)
        assert not lb.overlaps(ax.get_window_extent(renderer)), "the legend sits on the plot area"
        for bar in bars:
            assert not lb.overlaps(bar.get_window_extent(renderer)), "the legend covers a bar"
    title = (fig._suptitle or ax.title).get_window_extent(renderer)
    for label in ax.get_yticklabels():  # labels do not run into each other or the title
        assert not label.get_window_extent(renderer).overlaps(title)


def test_compare_shows_axes_merge_gain_borda_and_a_readable_png(store, tmp_path):
    from rich.console import Console
    from PIL import Image

    recipe = load_recipe(recipes_dir() / "local.yaml", [f"pipeline.mlflow_tracking_uri={store}"])
    parent_id = ablation_store(recipe)
    c = compare.compare_runs("embedpipe-local", out_png=tmp_path / "compare.png", parent_run_id=parent_id)
    # the cells, not the training jobs they stand for (which carry the cells' axes too)
    assert len(c["runs"]) == 4 and set(c["kinds"]) == {"cell"} and c["left_out_training_runs"] == 4
    assert c["plot_metric"] == "dev_mean_task"
    assert {"dev_mean_task", "test_mean_task", "dev_merge_gain"} <= set(c["metrics"])  # dev and test both shown
    assert set(c["params"]) == {"ablation.loss", "ablation.merge_set", "training.loss"}  # only what differs
    loss_axis = c["axes"]["loss"]
    assert loss_axis["changes"] == ["training.loss"]
    assert loss_axis["values"]["hard_negative_infonce"]["mean"] == pytest.approx((0.40 + 0.37) / 2)
    assert loss_axis["values"]["in_batch"]["best"] == pytest.approx(0.26)
    assert c["axes"]["merge_set"]["changes"] == [] and "sdg_mix" not in c["axes"]  # one value: not an axis
    gains = {m["run"]: m["gain"] for m in c["merge"]}
    assert gains == pytest.approx({"loss=hard_negative_infonce,sdg=recipe,merge=mix-a+mix-b": 0.02,
                                   "loss=in_batch,sdg=recipe,merge=mix-a+mix-b": -0.02})
    # Borda over the dev tasks (points n - rank per task): hard/all 2+3, hard/a 3+2, in_batch/all 0+1, in_batch/a 1+0
    assert list(c["borda"]["dev"].values()) == [1, 1, 3, 3]

    console = Console(record=True, width=200)
    for table in compare.comparison_tables(c):
        console.print(table)
    text = console.export_text()
    assert "axis 'loss': changes training.loss" in text and "merged vs best single" in text
    assert "Borda rank (dev tasks)" in text and "+0.0200" in text and "-0.0200" in text

    # the PNG: one bar per run for the plotted metric; labels and title inside; legend (kinds) off the bars
    fig = compare.score_figure(c, title="embedpipe-local: a long experiment title that has to wrap " * 2)
    bars = [p for p in fig.axes[0].patches]
    assert len(bars) == 4
    assert [round(b.get_width(), 4) for b in bars] == [0.4, 0.37, 0.25, 0.26]
    text_inside_figure_and_legend_off_the_bars(fig)
    with Image.open(tmp_path / "compare.png") as png:
        width, height = png.size
    assert (width, height) == tuple(round(v * 100) for v in fig.get_size_inches())


def test_compare_many_cells_a_row_each_with_each_values_spread_over_seeds(store, tmp_path):
    from rich.console import Console

    recipe = load_recipe(recipes_dir() / "local.yaml", [f"pipeline.mlflow_tracking_uri={store}"])
    parent_id = ablation_store(recipe, seeds=(42, 43))
    c = compare.compare_runs("embedpipe-local", parent_run_id=parent_id)
    assert len(c["runs"]) == 8 and c["left_out_training_runs"] == 8
    loss_axis = c["axes"]["loss"]["values"]
    assert loss_axis["in_batch"]["per_seed"] == pytest.approx({"42": 0.255, "43": 0.265})
    assert loss_axis["in_batch"]["seed_spread"] == pytest.approx(0.01)
    assert "per_seed" in c["axes"]["seed"]["values"]["42"] and not c["axes"]["seed"]["values"]["42"]["per_seed"]

    console = Console(record=True, width=320)  # wide enough that no run name folds
    for table in compare.comparison_tables(c):
        console.print(table)
    text = console.export_text()
    assert "8 runs (parameters that differ, then scores)" in text  # a row per run
    row = next(line for line in text.splitlines() if "loss=in_batch,sdg=recipe,merge=mix-a,seed=43" in line)
    cells = [c.strip() for c in row.split("│")]
    assert "43" in cells and "mix-a" in cells and "0.2700" in cells  # its seed, merge set, dev score (0.26 + 0.01)
    assert "seed = ablation.seed" in text or "ablation.seed = seed" in text  # equal columns shown once
    assert "mean per seed" in text and "42: 0.2550, 43: 0.2650" in text
    assert "merged at least as good in 2 of 4" in text and "8 training runs of this ablation are not listed" in text


def test_compare_full_pipeline_merged_vs_best_variant_with_legend_outside(store, tmp_path):
    import mlflow

    from embedpipe.orchestration import publish

    recipe = load_recipe(recipes_dir() / "local.yaml", [f"pipeline.mlflow_tracking_uri={store}"])
    parent_id = publish.open_run(recipe, "full", "kfp-full", run_name="first")
    for job, score in (("stage2/mix-a", 0.31), ("stage2/mix-b", 0.35)):
        with tracking.recipe_run(recipe, run_name=job.replace("/", " · "), parent_run_id=parent_id,
                                 tags={tracking.KIND_TAG: "training", tracking.JOB_TAG: job, tracking.STAGE_TAG: "stage2"}):
            tracking.log_metrics({"dev_mean_task": score, "dev_PydocRetrieval": score})
    with mlflow.start_run(run_id=parent_id):
        tracking.log_metrics({"dev_mean_task": 0.36, "dev_PydocRetrieval": 0.36, "test_mean_task": 0.33})
    tracking.close_pipeline_run(parent_id)
    c = compare.compare_runs("embedpipe-local", out_png=tmp_path / "full.png", parent_run_id=parent_id)
    assert c["runs"] == ["stage2 · mix-a", "stage2 · mix-b", "local · first"]
    assert c["kinds"] == ["stage2", "stage2", "merged"]
    (merge,) = [m for m in c["merge"] if m["role"] == "dev"]
    assert merge["best_single_run"] == "stage2 · mix-b" and merge["gain"] == pytest.approx(0.01)
    assert c["borda"]["dev"]["local · first"] == 1
    fig = compare.score_figure(c)
    assert fig.legends, "two kinds of bars: a legend"
    text_inside_figure_and_legend_off_the_bars(fig)
    with pytest.raises(tracking.TrackingError, match="none of the metrics \\['nope'\\]"):
        compare.compare_runs("embedpipe-local", parent_run_id=parent_id, metrics=["nope"])
    assert tracking.latest_pipeline_run("embedpipe-local") == parent_id


def test_training_worker_process_logs_into_its_launchers_child_run(store, tiny_encoder, records_dir, tmp_path):
    """``python -m embedpipe.training.launch`` (what torchrun and the TrainJob pods run): rank 0 resumes the child
    run its launcher step opened (MLFLOW_RUN_ID, MLFLOW_TRACKING_URI inherited) and logs the steps there."""
    import os
    import subprocess
    import sys

    from mlflow_store import PipelineStore

    from embedpipe.orchestration import publish

    recipe = load_recipe(recipes_dir() / "local.yaml", SMALL + [f"pipeline.mlflow_tracking_uri={store}"])
    publish.open_run(recipe, "full", "kfp-workers")
    (tmp_path / "recipe.json").write_text(recipe.model_dump_json())
    with tracking.training_run(recipe, "kfp-workers", "stage1") as run:
        assert tracking.worker_env() == {"MLFLOW_RUN_ID": run.info.run_id}
        done = subprocess.run([sys.executable, "-m", "embedpipe.training.launch", "--recipe", str(tmp_path / "recipe.json"),
                               "--stage", "stage1", "--records", str(records_dir / "records.jsonl"), "--init-model",
                               str(tiny_encoder), "--out", str(tmp_path / "out")],
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert tracking.worker_env() == {}
    child = PipelineStore.load(store, "embedpipe-local").training("stage1")
    assert child.info.run_id == run.info.run_id and child.info.status == "FINISHED"
    assert len(mlflow_history(child.info.run_id, "stage1.loss")) == 3


def test_compare_command_on_the_latest_pipeline_run(store, tmp_path):
    from typer.testing import CliRunner

    from embedpipe.cli import app

    recipe = load_recipe(recipes_dir() / "local.yaml", [f"pipeline.mlflow_tracking_uri={store}"])
    ablation_store(recipe)
    out = CliRunner().invoke(app, ["compare", "embedpipe-local", "--tracking-uri", store, "--parent", "latest",
                                   "--plot", str(tmp_path / "c.png")], env={"COLUMNS": "220"})
    assert out.exit_code == 0, out.output
    assert "axis 'loss': changes training.loss" in out.output and "merged vs best single" in out.output
    assert "Borda rank (dev tasks)" in out.output and (tmp_path / "c.png").stat().st_size > 5000
    bad = CliRunner().invoke(app, ["compare", "embedpipe-nope", "--tracking-uri", store, "--parent", "latest"])
    assert bad.exit_code == 2 and "has no pipeline run" in bad.output

