"""The role images, for real: each role's import check inside its image, a broken image (a module removed) naming
the step and the module, and the tiny pipeline run through kfp.local's DockerRunner giving the in-process scores.

Needs a container engine at DOCKER_HOST (Docker, or podman's service: `bash scripts/podman_setup.sh --service`) with
the images of `bash scripts/build_images.sh`. Skipped without them, unless EMBEDPIPE_REQUIRE_CONTAINERS=1 (.ci/run
sets it), which turns a missing engine or image into a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import yaml

from embedpipe.orchestration.images import ROLES, image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    docker = pytest.importorskip("docker")
    required = os.environ.get("EMBEDPIPE_REQUIRE_CONTAINERS") == "1"
    try:
        engine = docker.from_env(timeout=600)
        engine.ping()
        have = {tag for img in engine.images.list() for tag in img.tags}
    except docker.errors.DockerException as err:
        if required:
            pytest.fail(f"no container engine at {os.environ.get('DOCKER_HOST', 'the default socket')}: {err}")
        pytest.skip(f"no container engine: {err}")
    missing = [image(role) for role in ROLES if image(role) not in have]
    if missing:
        if required:
            pytest.fail(f"images missing (bash scripts/build_images.sh): {missing}")
        pytest.skip(f"images missing: {missing}")
    yield engine
    engine.close()


def run(client, image_name: str, command: list[str], **kwargs) -> tuple[int, str, str]:
    """Run to the end; (exit code, stdout, stderr). Created, waited and removed by hand (podman 4.3 and a container
    that exits at once: see embedpipe/orchestration/containers.py)."""
    container = client.containers.create(image_name, command=command, **kwargs)
    try:
        container.start()
        code = int(container.wait(timeout=900)["StatusCode"])
        out = container.logs(stdout=True, stderr=False).decode(errors="replace")
        err = container.logs(stdout=False, stderr=True).decode(errors="replace")
        return code, out, err
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@pytest.mark.parametrize("role", ROLES)
def test_each_image_runs_its_steps_imports_as_non_root(client, role):
    code, out, err = run(client, image(role), ["sh", "-c", "id -u && python3 -m embedpipe.orchestration.images check "
                                               f"{role} && python3 -c 'import kfp.dsl.executor_main'"])
    assert code == 0, out + err[-4000:]
    assert out.splitlines()[0] != "0", "the image runs as root"
    assert f"embedpipe-{role}: " in out and "OK" in out


def test_an_image_missing_a_module_fails_naming_the_step_and_the_module(client):
    script = ("pip uninstall -y -q faiss-cpu >/dev/null 2>&1; "
              "python3 -m embedpipe.orchestration.images check train")
    code, out, err = run(client, image("train"), ["sh", "-c", script], user="0")
    assert code == 1, out + err[-4000:]
    assert "step mine (image embedpipe-train): cannot import faiss (imported at embedpipe." in err, err[-4000:]
    assert "embedpipe-train: " in out and "missing" in out


def test_images_carry_this_checkouts_source_digest_and_older_source_is_refused(client, tmp_path):
    """The images are labelled with the digest of the source they hold; a checkout that differs (here: a copy with
    one file changed) is refused with how to rebuild."""
    import shutil

    from embedpipe.orchestration import containers, images

    root = images.checkout_root()
    digest = images.source_digest(root)
    for role in ROLES:
        assert client.images.get(image(role)).labels.get(images.SOURCE_LABEL) == digest, \
            f"{image(role)} was built from other source than this checkout: rebuild (bash scripts/build_images.sh)"
    assert containers.image_problems(client) is None
    copy = tmp_path / "checkout"
    for part in images.SOURCE_PARTS:
        if (root / part).is_file():
            copy.mkdir(exist_ok=True)
            shutil.copy2(root / part, copy / part)
        else:
            shutil.copytree(root / part, copy / part, symlinks=True)
    with (copy / "embedpipe" / "storage.py").open("a") as f:
        f.write("# changed\n")
    problem = containers.image_problems(client, root=copy)
    assert problem and "older embedpipe source than this checkout" in problem and "scripts/build_images.sh" in problem
    assert image("base") in problem and digest[:12] in problem


@pytest.mark.timeout(2700)  # two whole pipeline runs: 12.5 min in-process alone with seven engineers on 2 cores
def test_tiny_pipeline_in_containers_gives_the_in_process_scores(client, tmp_path, monkeypatch):
    from test_pipeline_local_run import tiny_recipe

    from embedpipe.orchestration.local_runner import run_local
    from embedpipe.pipelines import build_full_pipeline
    from embedpipe.recipe import load_recipe

    results = {}
    for runner in ("local", "docker"):
        folder = tmp_path / runner
        folder.mkdir()
        monkeypatch.chdir(folder)
        monkeypatch.setenv("EMBEDPIPE_STEP_CACHE", str(folder / "step-cache"))
        recipe = load_recipe(tiny_recipe(folder))
        results[runner] = run_local(recipe, build_full_pipeline, run_name=runner, runner=runner, cache=False)
    local, docker_run = results["local"], results["docker"]
    assert docker_run["runner"] == "docker"
    model = Path(docker_run["model_uri"])
    assert model.is_dir() and str(model).startswith(str(tmp_path / "docker" / "runs"))  # artifacts on the host
    scores = json.loads(Path(docker_run["scores_uri"]).read_text())
    # the corpus is the pinned pydoc snapshot (embedpipe/data/pydoc_topics.json.gz), not the interpreter's docs: the
    # image's Python (Debian's 3.11.2) and this one (3.11.7) give the same records, so the same scores
    assert scores["mean_task"] == pytest.approx(local["scores"]["mean_task"], abs=1e-6), (scores, local["scores"])
    local_scores = json.loads(Path(local["scores_uri"]).read_text())
    assert scores["scores"].keys() == local_scores["scores"].keys()
    for task, score in local_scores["scores"].items():
        assert scores["scores"][task] == pytest.approx(score, abs=1e-6), task
    manifest = yaml.safe_load(Path(docker_run["manifest"]).read_text())
    assert manifest["kind"] == "InferenceService"
    # what the live view keeps of a container run: every step done, its key figure, its own non-empty log file
    assert {s["state"] for s in docker_run["steps"]} == {"done"}
    for step in docker_run["steps"]:
        assert Path(step["log"]).is_file() and Path(step["log"]).stat().st_size > 0, step
    figures = {s["label"]: s["figure"] for s in docker_run["steps"]}
    assert figures["stage 1"].startswith("loss ") and "records" in figures["data build"], figures
