"""The ablation pipeline: its plan shares the steps whose inputs cells share, and it runs end to end with kfp.local
(in-process runner) on a tiny random-initialised Llama, leaving one MLflow parent, a child per cell and per stage-2
training, dev scores on each, and params that differ only where the grid does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from embedpipe.recipe import load_recipe, recipes_dir
from pipeline_spec import step_tasks


def _recipe(overrides: list[str] | None = None, name: str = "local.yaml"):
    return load_recipe(recipes_dir() / name, overrides or [])


def test_loss_axis_shares_sdg_and_mining_merge_axis_shares_training():
    from embedpipe.orchestration.ablation import plan_grid

    plan = plan_grid(_recipe(["pipeline.ablation.losses=[hard_negative_infonce,in_batch,gecko]",
                              "pipeline.ablation.merge_sets=[[mix-a],[mix-b],[mix-a,mix-b]]"]))
    assert len(plan["cells"]) == 9
    assert len(plan["mining"]) == 1  # the loss changes no SDG or mining input
    assert len(plan["stage1"]) == 3  # one stage 1 per loss
    assert [[v["name"] for v in g["variants"]] for g in plan["stage2"]] == [["mix-a", "mix-b"]] * 3  # once each
    assert sum(c["merged"] for c in plan["cells"]) == 3  # only the two-variant merge set is merged
    by_loss = {}
    for cell in plan["cells"]:
        by_loss.setdefault(cell["axes"]["loss"], set()).add(cell["group"])
    assert all(len(groups) == 1 for groups in by_loss.values())  # a loss's merge sets share its stage-2 group

    seeded = plan_grid(_recipe(["pipeline.ablation.seeds=[1,2]"]))
    assert len(seeded["mining"]) == 2 and len(seeded["stage1"]) == 2  # the seed reaches SDG, mining and training
    one = plan_grid(_recipe(["pipeline.ablation.merge_sets=[[mix-a],[mix-a,mix-b]]"]))
    assert len(one["stage1"]) == 1 and len(one["stage2"]) == 1


def test_training_lanes_bound_the_trainings_at_once():
    from embedpipe.orchestration.ablation import training_lanes

    assert training_lanes({"parallelism": 1, "stage1": [1, 2, 3]}) == (1, 1)
    assert training_lanes({"parallelism": 2, "stage1": [1, 2, 3]}) == (2, 1)
    assert training_lanes({"parallelism": 4, "stage1": [1]}) == (1, 4)  # one stage 1: its variants side by side
    assert training_lanes({"parallelism": 3, "stage1": [1, 2]}) == (2, 1)


def test_compiled_ablation_pipeline_follows_the_plan():
    """One SDG and mining task for a loss axis, a stage-1 task per loss chained in one lane (parallelism 1), a
    stage-2 loop per group with parallelism 1, a merge per merged cell."""
    from embedpipe.orchestration.compile import compiled_documents
    from embedpipe.pipelines import PIPELINES

    recipe = _recipe(["pipeline.ablation.losses=[hard_negative_infonce,in_batch]",
                      "pipeline.ablation.merge_sets=[[mix-a],[mix-a,mix-b]]"])
    spec = compiled_documents(PIPELINES["ablation"], recipe)[0]
    tasks = step_tasks(spec)
    names = sorted(tasks)
    assert [n for n in names if n.startswith("synthesize")] == ["synthesize"]
    assert [n for n in names if n.startswith("mine")] == ["mine"]
    stage1 = sorted(n for n in names if n.startswith("train-stage1"))
    assert len(stage1) == 2
    loops = [n for n in names if n.startswith("for-loop")]
    assert len(loops) == 2
    assert all(tasks[n]["iteratorPolicy"]["parallelismLimit"] == 1 for n in loops)
    assert len([n for n in names if n.startswith("merge-cells")]) == 2
    # the second stage 1 waits for the first one's stage-2 group (one lane: one training at a time)
    assert any(d.startswith(("ablation-report", "merge-cells"))
               for d in tasks[stage1[1]].get("dependentTasks", []))


def test_a_recipe_with_another_grid_is_refused_at_run_time():
    from embedpipe.orchestration.ablation import check_plan, plan_grid
    from embedpipe.recipe import RecipeError

    compiled = plan_grid(_recipe(["pipeline.ablation.losses=[hard_negative_infonce,in_batch]"]))
    assert check_plan(_recipe(["pipeline.ablation.losses=[hard_negative_infonce,in_batch]"]),
                      compiled["digest"])["stage1_trainings"] == 2
    with pytest.raises(RecipeError, match="not the one this pipeline was compiled for"):
        check_plan(_recipe(["pipeline.ablation.losses=[in_batch]"]), compiled["digest"])


def tiny_ablation_recipe(tmp_path: Path) -> Path:
    tree = yaml.safe_load((recipes_dir() / "local.yaml").read_text())
    tree["name"] = "tiny-ablation"
    tree["model"]["random_init"] = {"hidden_size": 64, "layers": 2}
    tree["data"]["sources"][0]["max_records"] = 48
    tree["sdg"]["enabled"] = False  # SDG with real SmolLM2 generation is exercised by the data area's tests
    tree["mining"]["candidates"] = 16
    for stage in ("stage1", "stage2"):
        tree["training"][stage].update(steps=2, batch_size=4, hard_negatives=1, warmup_steps=0)
        tree["training"][stage].pop("micro_batch_size", None)
    tree["evaluation"]["max_corpus"] = 120
    tree["pipeline"] = {"artifact_root": str(tmp_path / "runs"), "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                        "ablation": {"losses": ["hard_negative_infonce", "in_batch"],
                                     "merge_sets": [["mix-a"], ["mix-a", "mix-b"]], "parallelism": 1}}
    path = tmp_path / "tiny-ablation.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~25 kfp.local steps; on this shared 2-core machine (load ~15) it ran past 15 minutes
def test_ablation_pipeline_end_to_end_in_mlflow(tmp_path, monkeypatch):
    from embedpipe.orchestration.local_runner import run_local
    from embedpipe.pipelines import PIPELINES

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMBEDPIPE_STEP_CACHE", str(tmp_path / "step-cache"))
    recipe = load_recipe(tiny_ablation_recipe(tmp_path))
    started_ms = int(time.time() * 1000)
    result = run_local(recipe, PIPELINES["ablation"], run_name="grid")
    check_ablation_run(tmp_path, recipe, result, started_ms)


def check_ablation_run(tmp_path: Path, recipe, result: dict, started_ms: int) -> None:
    """What the tiny grid's run left: the steps kfp.local ran, and the MLflow store."""
    import mlflow

    from embedpipe import tracking

    # kfp.local ran each distinct step once: one SDG and mining, a stage 1 per loss, each group's variants once
    run_dir = max((tmp_path / "runs" / "kfp").glob("embedpipe-ablation-*"), key=lambda p: p.stat().st_mtime)
    ran = sorted(p.name for p in run_dir.iterdir())
    assert [n for n in ran if n.startswith("mine")] == ["mine"]
    assert len([n for n in ran if n.startswith("train-stage1")]) == 2
    stage2_steps = [p for p in run_dir.glob("for-loop-*/train-stage2*") if p.is_dir()]
    assert len(stage2_steps) == 4  # 2 losses x {mix-a, mix-b}, not once per cell
    assert len([p for p in run_dir.glob("for-loop-*/evaluate*") if p.is_dir()]) == 4  # each scored on dev
    assert len([n for n in ran if n.startswith("merge-cells")]) == 2  # one per merged cell

    tracking.setup(recipe.pipeline.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(recipe.experiment_name)
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [result["mlflow_run_id"]]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.start_time >= started_ms
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    cells = [r for r in children if r.data.tags.get(tracking.KIND_TAG) == "cell"]
    training = [r for r in children if r.data.tags.get(tracking.KIND_TAG) == "training"]
    stage2 = [r for r in training if r.data.tags.get(tracking.STAGE_TAG) == "stage2"]
    assert len(children) == len(cells) + len(training)
    assert sorted(r.info.run_name for r in cells) == sorted(
        f"loss={loss},sdg=recipe,merge={m}" for loss in ("hard_negative_infonce", "in_batch") for m in ("mix-a", "mix-a+mix-b"))
    assert len(stage2) == 4 and len(training) == 4 + 2  # each stage-2 training and each stage 1 once, not per cell

    # the tracking step is the last one: every training child (live while its step ran) and its dev scores (logged
    # by the dev evaluation step) are older than it
    track_started = max(r.info.start_time for r in cells)  # cell runs are created by the tracking step
    client = mlflow.MlflowClient()
    for run in stage2:
        assert run.info.end_time is not None and run.info.end_time < min(r.info.start_time for r in cells)
        assert "embedpipe.cached" not in run.data.tags  # it trained in this run, live
        dev_history = client.get_metric_history(run.info.run_id, "dev_mean_task")
        assert dev_history and dev_history[0].timestamp < min(r.info.start_time for r in cells)
        losses = client.get_metric_history(run.info.run_id, "stage2.loss")
        assert losses and max(m.timestamp for m in losses) < track_started

    for run in cells + stage2:  # dev scores on every cell and every stage-2 training, never test scores
        assert 0.0 <= run.data.metrics["dev_mean_task"] <= 1.0, run.info.run_name
        assert "dev_PydocRetrieval" in run.data.metrics
        assert not any(k.startswith(("test_", "eval.")) for k in run.data.metrics), run.info.run_name
    merged = [r for r in cells if r.data.params["ablation.merge_set"] == "mix-a+mix-b"]
    assert len(merged) == 2 and all("dev_merge_gain" in r.data.metrics for r in merged)
    # a single-variant cell's dev score is its variant's (the same training, scored once)
    single = {r.data.params["ablation.loss"]: r.data.metrics["dev_mean_task"] for r in cells
              if r.data.params["ablation.merge_set"] == "mix-a"}
    for run in stage2:
        if run.data.tags.get(tracking.VARIANT_TAG) == "mix-a":
            assert run.data.metrics["dev_mean_task"] == pytest.approx(single[run.data.params["ablation.loss"]])

    def differing(group):
        keys = set().union(*(r.data.params for r in group))
        return {k for k in keys if len({r.data.params.get(k) for r in group}) > 1}

    assert differing(cells) == {"training.loss", "ablation.loss", "ablation.merge_set"}
    # the loss axis, and the variant (its own settings, and the stage-2 settings they resolve to)
    assert {"ablation.loss", "variant.name", "variant.learning_rate"} <= differing(stage2)
    assert all(k in ("ablation.loss", "training.loss") or k.startswith(("variant.", "train.stage2."))
               for k in differing(stage2)), differing(stage2)
