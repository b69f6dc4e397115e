"""The full pipeline, end to end, on this machine with kfp.local (the same definition as the compiled YAML), on a
tiny random-initialised Llama; then a re-run that skips every finished step; then the compare output; then
`embedpipe run` on the same inputs (what a person reads: a line per step, the base / stage-1 / merged table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from embedpipe.recipe import load_recipe, recipes_dir


def tiny_recipe(tmp_path: Path) -> Path:
    tree = yaml.safe_load((recipes_dir() / "local.yaml").read_text())
    tree["name"] = "tiny"
    tree["model"]["random_init"] = {"hidden_size": 64, "layers": 2}
    tree["data"]["sources"][0]["max_records"] = 48
    tree["sdg"]["enabled"] = False  # SDG with real SmolLM2 generation is exercised by the data area's tests
    tree["mining"]["candidates"] = 16
    for stage in ("stage1", "stage2"):
        tree["training"][stage].update(steps=2, batch_size=4, hard_negatives=0, warmup_steps=0)
    tree["evaluation"]["max_corpus"] = 200
    tree["pipeline"] = {"artifact_root": str(tmp_path / "runs"), "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three runs of 18 steps (the base and stage-1 evaluations too) on a shared CPU
def test_local_run_end_to_end_then_cached_rerun_then_compare(tmp_path, monkeypatch, capfd):
    from embedpipe import tracking
    from embedpipe.evaluation import compare
    from embedpipe.cli.run_view import evaluations
    from embedpipe.encoder import Encoder
    from embedpipe.orchestration.local_runner import run_local
    from embedpipe.pipelines import build_full_pipeline
    from embedpipe.pipelines.full import EVALUATED

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMBEDPIPE_STEP_CACHE", str(tmp_path / "step-cache"))
    recipe = load_recipe(tiny_recipe(tmp_path))
    first = run_local(recipe, build_full_pipeline, run_name="first")
    captured = capfd.readouterr()
    assert "Executing task" not in captured.out and "KFP Executor" not in captured.out  # in the step logs instead

    # every step ran, with its time, key figure and its own log file
    steps = {s["label"]: s for s in first["steps"]}
    assert {s["state"] for s in first["steps"]} == {"done"}
    assert {"data build", "hard-negative mining", "stage 1", "stage 2 #1", "stage 2 #2", "merge",
            *EVALUATED.values()} <= set(steps)
    assert "records" in steps["data build"]["figure"] and "negatives" in steps["hard-negative mining"]["figure"]
    assert steps["stage 1"]["figure"].startswith("loss ") and "Mean(Task)" in steps[EVALUATED["merged"]]["figure"]
    for step in first["steps"]:
        assert Path(step["log"]).is_file() and Path(step["log"]).parent == Path(first["logs"]), step
    assert "KFP Executor" in Path(steps["stage 1"]["log"]).read_text()
    # the untrained base, stage 1 and the merged model, scored on the same tasks
    scored = evaluations(first["steps"])
    assert set(scored) == {"base", "stage1", "merged"}
    assert set(scored["base"]["scores"]) == set(scored["stage1"]["scores"]) == set(scored["merged"]["scores"])
    assert scored["merged"]["mean_task"] == pytest.approx(first["scores"]["mean_task"])

    model = Path(first["model_uri"])
    assert model.is_dir() and str(model).startswith(str(tmp_path / "runs" / "tiny"))
    vectors = Encoder.from_pretrained(model).encode(["how do I open a file"])
    assert vectors.shape == (1, 64)
    scores = json.loads(Path(first["scores_uri"]).read_text())
    assert 0.0 <= scores["mean_task"] <= 1.0 and first["scores"]["mean_task"] == scores["mean_task"]
    manifest = yaml.safe_load(Path(first["manifest"]).read_text())
    assert manifest["kind"] == "InferenceService"
    assert first["mlflow_model_uri"].startswith("models:/")

    # MLflow: a parent run with the recipe as params and scores as metrics, a child run per stage-2 variant
    import mlflow

    tracking.setup(recipe.pipeline.mlflow_tracking_uri)
    parent = mlflow.get_run(first["mlflow_run_id"])
    assert parent.data.params["training.stage2.steps"] == "2"
    assert parent.data.metrics["mean_task"] == pytest.approx(scores["mean_task"])
    for which in ("base", "stage1"):  # the other models' scores on the same tasks, beside the merged model's
        assert parent.data.metrics[f"{which}.test_mean_task"] == pytest.approx(scored[which]["mean_task"])
    assert "dev_mean_task" in parent.data.metrics  # the merged model on the dev tasks
    comparison = compare.compare_runs("embedpipe-tiny", out_png=tmp_path / "cmp.png", parent_run_id=parent.info.run_id,
                                       metrics=["stage2.final_loss"])
    # a child per training job, then the merged model (the parent, which holds the scores)
    # (in start order; the two stage-2 runs train side by side here, so either may start first)
    runs = comparison["runs"]
    assert runs[0] == "stage1" and sorted(runs[1:3]) == ["stage2 · mix-a", "stage2 · mix-b"] and runs[3] == "tiny · first"
    assert comparison["kinds"] == ["stage1", "stage2", "stage2", "merged"]
    assert comparison["params"]["variant.learning_rate"][runs.index("stage2 · mix-b")] == "2e-05"
    assert (tmp_path / "cmp.png").stat().st_size > 1000

    # the same inputs again: every step but the (uncached) tracking step comes from the cache
    second = run_local(recipe, build_full_pipeline, run_name="second")
    assert second["mlflow_run_id"] != first["mlflow_run_id"]
    assert second["seconds"] < first["seconds"] / 2
    assert json.loads(Path(second["scores_uri"]).read_text()) == scores
    runs = list((tmp_path / "runs" / "kfp").glob("embedpipe-full-*"))
    second_run = max(runs, key=lambda p: p.stat().st_mtime)
    assert {p.name for p in second_run.iterdir()} <= {"track-open", "track-full", "track-close", "logs"}  # only tracking
    assert {s["state"] for s in second["steps"] if not s["task"].startswith("track-")} == {"cached"}
    second_parent = mlflow.get_run(second["mlflow_run_id"]).data.metrics  # the cached scores reach the new parent
    for key in ("mean_task", "dev_mean_task", "base.test_mean_task", "stage1.test_mean_task"):
        assert second_parent[key] == pytest.approx(parent.data.metrics[key]), key

    # what `embedpipe run` prints off a terminal: one line per state change, the table, where things are
    from typer.testing import CliRunner

    from embedpipe.cli import app

    result = CliRunner().invoke(app, ["run", str(tmp_path / "tiny.yaml"), "--run-name", "third"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) < 2 * len(second["steps"]) + 40, result.output
    assert any("stage 1" in line and "cached" in line and "loss" in line for line in lines), result.output
    assert "MTEB scores on the same tasks" in result.output and "Δ vs base" in result.output
    assert "Mean(Task)" in result.output and "step logs:" in result.output


def test_preflight_reports_every_problem_before_running(tmp_path):
    from embedpipe.orchestration.local_runner import run_local
    from embedpipe.pipelines import build_full_pipeline
    from embedpipe.orchestration.preflight import PreflightError

    path = tiny_recipe(tmp_path)
    tree = yaml.safe_load(path.read_text())
    tree["data"]["sources"].append({"name": "mine", "kind": "jsonl", "path": str(tmp_path / "missing.jsonl")})
    tree["pipeline"]["mlflow_tracking_uri"] = "http://127.0.0.1:9"
    tree["pipeline"]["artifact_root"] = "s3://bucket/runs"
    tree["pipeline"]["s3_endpoint"] = "127.0.0.1:9"
    tree["pipeline"]["s3_secure"] = False
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(PreflightError) as err:
        run_local(load_recipe(path), build_full_pipeline, base=tmp_path)
    message = str(err.value)
    assert "3 problems" in message
    assert f"data.sources[2] (mine).path: {tmp_path / 'missing.jsonl'} does not exist" in message
    assert "S3 endpoint http://127.0.0.1:9 is not usable for s3://bucket/runs" in message
    assert "MLflow server http://127.0.0.1:9 is not reachable" in message
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_unknown_step_option_is_a_recipe_error(tmp_path):
    from embedpipe.recipe import RecipeError

    path = tiny_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"mining.top_kk: Extra inputs are not permitted"):
        load_recipe(path, ["mining.top_kk=3"])
