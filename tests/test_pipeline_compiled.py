"""The compiled IR YAML: up to date with the code, and carrying node selectors, tolerations, GPU limits and
secret references for the GPU steps."""

from __future__ import annotations

import re

import pytest
import yaml

from embedpipe.orchestration import compile as pipeline_compile
from embedpipe.pipelines import PIPELINES
from embedpipe.recipe import load_recipe, recipes_dir
from pipeline_spec import step_tasks


@pytest.fixture(scope="module")
def compiled():
    out = {}
    for name in pipeline_compile.COMMITTED_RECIPES:
        recipe = load_recipe(recipes_dir() / f"{name}.yaml")
        for kind, build in PIPELINES.items():
            out[(name, kind)] = pipeline_compile.compiled_documents(build, recipe)
    return out


def test_committed_yaml_is_up_to_date(compiled):
    for (name, kind), docs in compiled.items():
        path = pipeline_compile.committed_path(name, kind)
        assert path.is_file(), f"{path} is missing: run `embedpipe compile`"
        committed = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert committed == docs, f"{path} is out of date with the code: run `embedpipe compile`"


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def _platform(docs: list[dict]) -> dict:
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


GPU_STEPS = {"synthesize", "synthesize-generator", "mine", "train-stage1", "train-stage2", "evaluate"}


def test_gpu_steps_carry_pool_tolerations_gpus_and_secrets(compiled):
    docs = compiled[("local", "full")]
    executors, platform = _executors(docs[0]), _platform(docs)
    gpu_executors = {k for k, v in executors.items() if "accelerator" in v["container"].get("resources", {})}
    # evaluate, evaluate-2...: the merged, base and stage-1 models (test), each variant and the merged one (dev)
    assert {re.sub(r"-\d+$", "", k.removeprefix("exec-")) for k in gpu_executors} == GPU_STEPS
    for name in gpu_executors:
        resources = executors[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert int(resources["accelerator"]["resourceCount"]) >= 1
        config = platform[name]
        assert config["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
        assert config["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
        secret = config["secretAsEnv"][0]
        assert secret["secretName"] == "embedpipe-s3" or secret.get("secretNameParameter")
        assert {e["envVar"] for e in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # CPU steps get no GPU and no GPU node pool; the tracking step also gets the MLflow secret
    assert "nodeSelector" not in platform["exec-build-data"]
    track_secrets = {s.get("secretName") for s in platform["exec-track-full"]["secretAsEnv"]}
    assert track_secrets == {"embedpipe-s3", "embedpipe-mlflow"}
    assert step_tasks(docs[0])["track-full"]["cachingOptions"] == {}  # caching off: a new MLflow run


def test_every_step_runs_inside_an_exit_handler_that_closes_the_parent(compiled):
    for (_, kind), docs in compiled.items():
        root = docs[0]["root"]["dag"]["tasks"]
        assert set(root) == {"exit-handler-1", "track-close"}, kind
        close = root["track-close"]
        assert close["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}  # runs however the steps ended
        assert close["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
        assert close["cachingOptions"] == {}
        assert {"track-open", f"track-{kind}"} <= set(step_tasks(docs[0]))


def test_full_pipeline_shape(compiled):
    spec = compiled[("local", "full")][0]
    tasks = step_tasks(spec)
    (loop_name,) = [n for n, t in tasks.items() if n.startswith("for-loop") and "parameterIterator" in t]
    assert {"build-data", "synthesize", "mine", "train-stage1", "plan-variants", loop_name, "merge",
            "track-full"} <= set(tasks)

    def role(task):
        return task["inputs"]["parameters"].get("role", {}).get("runtimeValue", {}).get("constant", "test")

    evaluations = {role(t) for n, t in tasks.items() if n.startswith("evaluate")}
    assert evaluations == {"dev", "test"}  # the merged model on the dev tasks and on the test tasks
    loop = spec["components"][tasks[loop_name]["componentRef"]["name"]]["dag"]["tasks"]
    assert {role(t) for n, t in loop.items() if n.startswith("evaluate")} == {"dev"}  # each variant, dev only
    assert tasks[loop_name]["parameterIterator"]["items"]["inputParameter"].endswith("plan-variants-Output")
    # the merged model, the untrained base and the stage-1 model on the same tasks
    from embedpipe.pipelines.full import EVALUATED

    evaluated = {t["taskInfo"]["name"]: t["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
                 for t in tasks.values() if t["componentRef"]["name"].startswith("comp-evaluate") and role(t) == "test"}
    assert evaluated == {EVALUATED["merged"]: {"producerTask": "merge", "outputArtifactKey": "merged"},
                         EVALUATED["base"]: {"producerTask": "base-encoder", "outputArtifactKey": "model"},
                         EVALUATED["stage1"]: {"producerTask": "train-stage1", "outputArtifactKey": "model"}}
    merge_input = tasks["merge"]["inputs"]["artifacts"]["models"]["taskOutputArtifact"]
    assert merge_input["producerTask"] == loop_name  # dsl.Collected over the stage-2 runs
    images = {e["container"]["image"] for e in _executors(spec).values()}
    assert images == {f"ghcr.io/embedpipe/embedpipe-{r}:0.1.0" for r in ("base", "sdg", "train", "eval")}


def test_multi_node_recipe_trains_through_pytorchjob_launchers(compiled):
    docs = compiled[("llama-embed-nemotron-8b", "full")]
    executors, platform = _executors(docs[0]), _platform(docs)
    assert "exec-train-stage1-job" in executors and "exec-train-stage2-job" in executors
    assert "exec-train-stage1" not in executors
    assert "accelerator" not in executors["exec-train-stage1-job"]["container"].get("resources", {})
    assert "nodeSelector" not in platform["exec-train-stage1-job"]  # the launcher is a CPU pod
    assert "accelerator" in executors["exec-mine"]["container"]["resources"]


def test_ablation_pipeline_shape(compiled):
    """The local recipe's grid is one cell (its loss, all its stage-2 variants merged): the steps of the plan,
    unrolled, with the stage-2 variants in a loop, each scored on the dev tasks (tests/test_pipeline_ablation.py
    covers larger grids)."""
    spec = compiled[("local", "ablation")][0]
    tasks = step_tasks(spec)
    assert {"build-data", "plan-ablation", "synthesize", "mine", "train-stage1", "merge-cells", "track-ablation"} \
        <= set(tasks)
    loop = next(n for n in tasks if n.startswith("for-loop"))
    inner = spec["components"][tasks[loop]["componentRef"]["name"]]["dag"]["tasks"]
    assert {"train-stage2", "evaluate"} <= set(inner)
    assert inner["evaluate"]["inputs"]["parameters"]["role"]["runtimeValue"]["constant"] == "dev"


def test_images_follow_the_recipe():
    recipe = load_recipe(recipes_dir() / "local.yaml", ["pipeline.image_registry=registry.example/ml",
                                                        "pipeline.image_tag=v2"])
    spec = pipeline_compile.compiled_documents(PIPELINES["full"], recipe)[0]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"registry.example/ml/embedpipe-{r}:v2" for r in ("base", "sdg", "train", "eval")}


def test_ablation_grid_cells():
    from embedpipe.orchestration.ablation import grid_cells
    from embedpipe.recipe import RecipeError

    recipe = load_recipe(recipes_dir() / "local.yaml", {
        "pipeline.ablation": {"losses": ["hard_negative_infonce", "in_batch"],
                              "generator_mixes": [{"name": "all", "shares": {"smollm2-135m": 1.0}}],
                              "merge_sets": [["mix-a"], ["mix-a", "mix-b"]]}})
    cells = grid_cells(recipe)
    assert len(cells) == 4
    assert cells[1]["name"] == "loss=hard_negative_infonce,sdg=all,merge=mix-a+mix-b"
    assert cells[2]["overrides"]["training.loss"] == "in_batch"
    # a bad axis is an error when the recipe loads (not when the grid is planned)
    with pytest.raises(RecipeError, match=r"unknown stage-2 variants \['mix-z'\]"):
        load_recipe(recipes_dir() / "local.yaml", {"pipeline.ablation": {"merge_sets": [["mix-z"]]}})
    with pytest.raises(RecipeError, match=r"pipeline.ablation.losses\[1\]: Input should be"):
        load_recipe(recipes_dir() / "local.yaml", {"pipeline.ablation": {"losses": ["hard_negative_infonce", "bogus"]}})
