"""The steps of a kfp.local run as they happen: states, times, key figures, one log file per step (the task's own
output, nothing of it on stdout), cached steps on a re-run, and a failed step named with its log; then what
``embedpipe run`` prints of it (plain lines off a terminal, the base / stage-1 / merged table)."""

import io
import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from kfp import dsl, local

from embedpipe.orchestration.progress import StepWatcher, planned_steps


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def build_data(word: str) -> str:  # named as the data step: its output reads as a DataSummary
    import json
    import sys

    print(f"building from {word}")
    print("a warning on stderr", file=sys.stderr)
    return json.dumps({"records": len(word), "corpus_documents": 7, "by_source": {"x": 1}})


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def shout(word: str) -> str:
    print(f"shouting {word.upper()}")
    return word.upper()


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def explode(word: str):
    print(f"about to fail on {word}")
    raise SystemExit(3)


@dsl.pipeline(name="progress-ok")
def ok_pipeline(word: str = "abc"):
    data = build_data(word=word).set_display_name("data build")
    with dsl.ParallelFor(["x", "y"], parallelism=1) as item:
        shout(word=item).set_display_name("shout").after(data)


@dsl.pipeline(name="progress-fail")
def failing_pipeline(word: str = "abc"):
    data = build_data(word=word).set_display_name("data build")
    explode(word=word).set_display_name("explode").after(data)


def _spec(pipeline) -> dict:
    return json_format.MessageToDict(pipeline.pipeline_spec)


def _run(pipeline, root: Path, cache: bool = True):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=cache, cache_root=str(root / ".cache"))
    changes = []
    watcher = StepWatcher(_spec(pipeline), root, on_change=lambda step, steps: changes.append((step.label, step.state)))
    return watcher, changes


def test_planned_steps_follow_the_dependencies_with_a_loop_body_once():
    steps = planned_steps(_spec(ok_pipeline))
    assert [(s.label, s.state) for s in steps] == [("data build", "pending"), ("shout", "pending")]
    assert steps[1].key.endswith("/shout")  # inside its ParallelFor


@pytest.mark.slow
def test_each_step_gets_its_state_figure_and_own_log_then_a_rerun_is_cached(tmp_path, capfd):
    watcher, changes = _run(ok_pipeline, tmp_path)
    with watcher:
        ok_pipeline(word="abcd")
    out = capfd.readouterr()
    assert "building from" not in out.out + out.err and "Executing task" not in out.out + out.err  # all in the logs
    labels = [(s.label, s.state) for s in watcher.steps]
    assert labels == [("data build", "done"), ("shout #1", "done"), ("shout #2", "done")]
    assert ("data build", "running") in changes and changes.index(("data build", "running")) < changes.index(
        ("data build", "done"))
    data = watcher.steps[0]
    assert data.figure == "4 records, 7 documents" and data.summary["by_source"] == {"x": 1}
    assert data.seconds > 0
    log = data.log.read_text()
    assert "building from abcd" in log and "a warning on stderr" in log
    assert data.log.parent == watcher.run_folder / "logs" and (watcher.run_folder / "logs" / "pipeline.log").is_file()
    shout_logs = sorted(s.log.read_text() for s in watcher.steps[1:])
    assert "shouting X" in shout_logs[0] and "shouting Y" in shout_logs[1]  # each iteration its own file
    assert "shouting Y" not in shout_logs[0]

    again, _ = _run(ok_pipeline, tmp_path)
    with again:
        ok_pipeline(word="abcd")
    assert [s.state for s in again.steps] == ["cached"] * 3
    assert again.steps[0].figure == "4 records, 7 documents"  # the cached output reads back as its summary


@pytest.mark.slow
def test_a_failed_step_is_named_with_its_log(tmp_path):
    from embedpipe.orchestration.progress import tail

    watcher, _ = _run(failing_pipeline, tmp_path, cache=False)
    with pytest.raises(RuntimeError), watcher:
        failing_pipeline()
    assert [(s.label, s.state) for s in watcher.steps] == [("data build", "done"), ("explode", "failed")]
    failed = watcher.failed()[0]
    assert any("about to fail on abc" in line for line in tail(failed.log))


def test_plain_lines_off_a_terminal_and_the_comparison_table():
    from rich.console import Console

    from embedpipe.cli.run_view import RunView, comparison_table
    from embedpipe.orchestration.progress import Step
    from embedpipe.orchestration.summaries import EvalSummary

    buffer = io.StringIO()
    console = Console(file=buffer, width=150)
    assert not console.is_terminal
    view = RunView(console, "embedpipe full")
    step = Step(key="evaluate", task="evaluate", component="comp-evaluate", label="MTEB evaluation (merged)")
    with view:
        step.state = "running"
        view.on_step(step, [step])
        step.state, step.seconds = "done", 3.25
        step.summary = EvalSummary(mean_task=0.5, scores={"a": 0.5})
        view.on_step(step, [step])
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 and "running" in lines[0]
    assert "done" in lines[1] and "3.2s" in lines[1] and "Mean(Task) 0.5000 on 1 task" in lines[1]

    scores = {"base": {"scores": {"a": 0.1, "b": 0.2}, "mean_task": 0.15, "mean_task_type": 0.15},
              "stage1": {"scores": {"a": 0.3, "b": 0.2}, "mean_task": 0.25, "mean_task_type": 0.25},
              "merged": {"scores": {"a": 0.4, "b": 0.1}, "mean_task": 0.25, "mean_task_type": 0.25}}
    buffer = io.StringIO()
    Console(file=buffer, width=150).print(comparison_table(scores))
    table = buffer.getvalue()
    row = next(line for line in table.splitlines() if line.strip("│┃ ").startswith("a "))
    assert "0.1000" in row and "0.3000" in row and "0.4000" in row and "+0.3000" in row and "+0.1000" in row
    assert "-0.1000" in next(line for line in table.splitlines() if line.strip("│┃ ").startswith("b "))
    assert "Mean(Task)" in table and "Δ vs base" in table
    assert comparison_table({"merged": scores["merged"]}) is None  # nothing to compare with
    assert json.loads(json.dumps(scores)) == scores


def test_embedpipe_run_names_the_failed_step_and_its_log(tmp_path, monkeypatch):
    """The command's side of a failure: exit 1, the step, the end of its log and the log's path."""
    from typer.testing import CliRunner

    from embedpipe.cli import app
    from embedpipe.orchestration import local_runner
    from embedpipe.orchestration.progress import Step, StepFailed
    from embedpipe.recipe import recipes_dir

    log = tmp_path / "logs" / "train-stage1.log"
    log.parent.mkdir()
    log.write_text("loading\nRuntimeError: CUDA out of memory\n")

    def failing(recipe, pipeline, **kwargs):
        step = Step(key="train-stage1", task="train-stage1", component="comp-train-stage1", label="stage 1",
                    state="failed", seconds=4.0, log=log)
        kwargs["on_step"](step, [step])
        raise StepFailed(step, "Task 'train-stage1' finished with status FAILURE")

    monkeypatch.setattr(local_runner, "run_local", failing)
    result = CliRunner().invoke(app, ["run", str(recipes_dir() / "local.yaml")])
    assert result.exit_code == 1, result.output
    assert "step 'stage 1' failed after 4.0s" in result.output
    assert "RuntimeError: CUDA out of memory" in result.output and f"full log: {log}" in result.output


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def a_step(fail: bool) -> str:  # stands for any step: fails as a broken or killed one does
    if fail:
        raise SystemExit("out of memory in stage 1")
    return "{}"


def _exit_handled(fail: bool):
    """The pipelines' own first step and exit handler (the closing step) around one step that fails or not."""
    from embedpipe.components.track.component import track_open
    from embedpipe.orchestration.cluster import ClusterSettings
    from embedpipe.pipelines.full import RUN_ID, closing_step

    @dsl.pipeline(name="embedpipe-full")
    def pipeline(recipe_json: str):
        with dsl.ExitHandler(closing_step(ClusterSettings(), recipe_json)):
            opened = track_open(recipe_json=recipe_json, pipeline="full", kfp_run_id=RUN_ID)
            a_step(fail=fail).after(opened)

    return pipeline


@pytest.mark.parametrize("fail", [True, False])
def test_the_exit_handler_ends_a_parent_its_tracking_step_never_reached(tmp_path, monkeypatch, fail):
    """A pipeline whose steps stop before the tracking step (a failed or cancelled step on Kubeflow) leaves no parent
    RUNNING: the exit handler runs however the steps ended and ends it FAILED with KFP's state, or FINISHED."""
    from mlflow_store import PipelineStore

    from embedpipe import tracking
    from embedpipe.recipe import load_recipe, recipes_dir

    monkeypatch.chdir(tmp_path)
    store = tracking.setup(f"sqlite:///{tmp_path / 'mlflow.db'}")
    recipe = load_recipe(recipes_dir() / "local.yaml", [f"pipeline.mlflow_tracking_uri={store}"])
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True, enable_caching=False)
    pipeline = _exit_handled(fail)
    watcher = StepWatcher(json_format.MessageToDict(pipeline.pipeline_spec), tmp_path / "kfp")
    if fail:
        with pytest.raises(RuntimeError), watcher:
            pipeline(recipe_json=recipe.model_dump_json())
    else:
        with watcher:
            pipeline(recipe_json=recipe.model_dump_json())
    states = {s.task: s.state for s in watcher.steps}
    assert len(watcher.steps) == 3  # the planned steps are the ones that ran: none left pending
    assert states == {"track-open": "done", "a-step": "failed" if fail else "done", "track-close": "done"}
    closing = next(s for s in watcher.steps if s.task == "track-close")
    parent = PipelineStore.load(store, "embedpipe-local").parent
    assert closing.summary.parent_run_id == parent.info.run_id
    if fail:
        assert parent.info.status == "FAILED" and parent.data.tags[tracking.FAILURE_TAG].startswith("pipeline FAILED")
        assert closing.figure == "parent run FAILED (steps failed)"
    else:
        assert parent.info.status == "FINISHED" and tracking.FAILURE_TAG not in parent.data.tags
