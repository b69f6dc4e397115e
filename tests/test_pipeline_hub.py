"""Hub access and GPU sizing of the compiled pipelines: the download step, the model cache PVC and /dev/shm on the
GPU steps, one SDG task per generator with its tensor-parallel GPUs; and the download plan / offline cache check."""

from __future__ import annotations

import pytest

from embedpipe.orchestration import compile as pipeline_compile
from embedpipe.pipelines import PIPELINES
from embedpipe.orchestration.hub import HubEntry, download, download_plan, is_hub_id
from embedpipe.recipe import load_recipe, recipes_dir
from pipeline_spec import step_tasks


@pytest.fixture(scope="module")
def paper():
    recipe = load_recipe(recipes_dir() / "llama-embed-nemotron-8b.yaml")
    return recipe, {kind: pipeline_compile.compiled_documents(build, recipe) for kind, build in PIPELINES.items()}


def _env(executor: dict) -> dict:
    return {e["name"]: e["value"] for e in executor["container"].get("env", [])}


def test_gpu_steps_mount_the_model_cache_and_shared_memory(paper):
    recipe, docs = paper
    for kind, (spec, platform_doc) in docs.items():
        executors = spec["deploymentSpec"]["executors"]
        platform = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        gpu = [k for k, v in executors.items() if "accelerator" in v["container"].get("resources", {})]
        assert gpu, kind
        for name in gpu:
            config = platform[name]
            assert [(m["constant"], m["mountPath"]) for m in config["pvcMount"]] == \
                [("embedpipe-model-cache", "/models")], name
            assert {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "64Gi"} \
                in config["emptyDirMounts"], name
            env = _env(executors[name])
            assert env["HF_HOME"] == "/models/hf" and env["HF_HUB_OFFLINE"] == "1", name  # the cache, offline
        # the one download step goes online, with the optional token Secret, into the same cache
        download_env = _env(executors["exec-download-models"])
        assert download_env == {"HF_HOME": "/models/hf", "HF_HUB_OFFLINE": "0"}
        token = [s for s in platform["exec-download-models"]["secretAsEnv"] if s.get("secretName") == "embedpipe-hf"]
        assert token and token[0]["optional"] is True and token[0]["keyToEnv"][0]["envVar"] == "HF_TOKEN"
        assert platform["exec-download-models"]["pvcMount"][0]["mountPath"] == "/models"


def test_each_sdg_task_asks_for_its_generators_tensor_parallel_gpus(paper):
    recipe, docs = paper
    spec = docs["full"][0]
    tasks = step_tasks(spec)
    executors = spec["deploymentSpec"]["executors"]
    per_generator = {}
    for name, task in tasks.items():
        if task["componentRef"]["name"].startswith("comp-synthesize-generator"):
            generator = task["inputs"]["parameters"]["generator"]["runtimeValue"]["constant"]
            executor = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
            per_generator[generator] = int(executor["container"]["resources"]["accelerator"]["resourceCount"])
    assert per_generator == {g.name: g.tensor_parallel_size for g in recipe.sdg.generators}
    assert set(per_generator.values()) == {1, 4, 8}
    filter_task = next(t for t in tasks.values() if t["componentRef"]["name"] == "comp-synthesize")
    assert filter_task["inputs"]["parameters"]["generate"]["runtimeValue"]["constant"] is False
    assert len(filter_task["dependentTasks"]) >= len(per_generator)  # after every generator's task
    # ablation cells may change the mix: their one SDG task gets the largest degree
    ablation = docs["ablation"][0]["deploymentSpec"]["executors"]
    assert int(ablation["exec-synthesize"]["container"]["resources"]["accelerator"]["resourceCount"]) == 8


def test_local_runs_get_no_hub_env():
    recipe = load_recipe(recipes_dir() / "local.yaml")
    spec = pipeline_compile.compiled_documents(PIPELINES["full"], recipe)[0]
    assert _env(spec["deploymentSpec"]["executors"]["exec-synthesize"])["HF_HUB_OFFLINE"] == "1"  # recipe: offline
    assert "HF_HOME" not in _env(spec["deploymentSpec"]["executors"]["exec-synthesize"])  # no cache PVC locally


def test_the_kfp_local_flavour_sets_no_hub_env(tmp_path):
    """kfp.local applies tasks' env variables: a cluster recipe run locally must not point HF_HOME at /models."""
    import yaml
    from kfp import compiler

    recipe = load_recipe(recipes_dir() / "llama-embed-nemotron-8b.yaml")
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline_compile.pipeline_function(PIPELINES["full"], recipe, local=True), str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert not {"HF_HOME", "HF_HUB_OFFLINE"} & set(_env(executor)), name


def test_download_plan_lists_every_hub_model_and_dataset_once(paper):
    recipe, _ = paper
    plan = download_plan(recipe)
    repos = {(e.repo_type, e.repo_id) for e in plan}
    assert ("model", recipe.model.base) in repos
    assert {("model", t.model) for t in recipe.mining.teachers} <= repos
    assert {("model", g.model) for g in recipe.sdg.generators} <= repos
    assert ("model", recipe.sdg.teacher) in repos
    assert len(repos) == len(plan)  # once each
    datasets = [e for e in plan if e.repo_type == "dataset"]
    assert datasets and all(e.revision for e in datasets if e.why.startswith("mteb task"))  # pinned revisions
    local = download_plan(load_recipe(recipes_dir() / "local.yaml"))
    assert all(not is_hub_id(name) for name in ("all-minilm-l6-v2", "smollm2-135m-instruct", "s3://a/b"))
    assert [e for e in local if e.repo_type == "model"] == []  # packaged models only


def _prefill(cache, repo_id: str, repo_type: str = "model", files=("config.json",)):
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")
    return snapshot


def test_offline_download_uses_a_prefilled_cache_and_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _prefill(tmp_path, "org/base")
    _prefill(tmp_path, "org/data", "dataset")
    entries = [HubEntry("org/base", "model", "base model"), HubEntry("org/data", "dataset", "data source d")]
    result = download(entries, cache_dir=tmp_path, offline=True)
    assert [e["path"] for e in result["entries"]][0] == str(snapshot) and result["missing"] == []
    with pytest.raises(RuntimeError, match=r"lacks 1 of 3 entries: model org/teacher \(mining teacher\)"):
        download(entries + [HubEntry("org/teacher", "model", "mining teacher")], cache_dir=tmp_path, offline=True)


def test_mining_embeds_the_corpus_in_a_fan_out_before_the_search(paper):
    recipe, docs = paper
    spec = docs["full"][0]
    tasks = step_tasks(spec)
    # the search + selection waits for a loop: every embedding task
    (loop,) = [name for name in tasks["mine"]["dependentTasks"] if name.startswith("for-loop")]
    assert tasks[loop]["parameterIterator"]["items"]["raw"] == str(list(range(recipe.mining.embed_tasks)))
    inner = spec["components"][tasks[loop]["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["embed-corpus"]
    executor = spec["deploymentSpec"]["executors"]["exec-embed-corpus"]
    assert int(executor["container"]["resources"]["accelerator"]["resourceCount"]) == 1


def test_evaluation_fans_out_over_task_groups_then_merges(paper):
    recipe, docs = paper
    spec = docs["full"][0]
    tasks = step_tasks(spec)
    loops = [t for t in tasks.values() if t.get("parameterIterator", {}).get("items", {}).get("raw")
             == str(list(range(recipe.evaluation.groups)))]
    inner = [set(spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]) for t in loops]
    assert {"evaluate-group"} in inner
    merged = tasks["merge-evaluations"]["inputs"]["artifacts"]["groups"]["taskOutputArtifact"]
    assert merged["producerTask"].startswith("for-loop")  # dsl.Collected over the groups
    assert tasks["track-full"]["inputs"]["artifacts"]["results"]["taskOutputArtifact"]["producerTask"] == \
        "merge-evaluations"
