"""The role images, for real: each role's import check inside its image, a broken image (a module removed) naming
the step and the module, the tiny pipeline run through kfp.local's DockerRunner giving the in-process scores, and
Trainer's torch-distributed and deepspeed-distributed runtimes (torchrun; mpirun over sshd) played by two train
containers.

Needs a container engine at DOCKER_HOST (Docker, or podman's service: `bash scripts/podman_setup.sh --service`) with
the images of `bash scripts/build_images.sh`. Skipped without them, unless EMBEDPIPE_REQUIRE_CONTAINERS=1 (.ci/run
sets it), which turns a missing engine or image into a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
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


NODES_SUBNET, NODES_GATEWAY = "10.213.77.0/24", "10.213.77.1"  # a bridge of its own: static addresses, no DNS needed


def _runtime_node_command() -> list[str]:
    """The node container's command and args in Trainer's deepspeed-distributed ClusterTrainingRuntime (the copy in
    ../shared/schemas; its Helm template lines dropped)."""
    from crd_schemas import shared_dir

    shared = shared_dir()
    if shared is None:
        pytest.skip("../shared/schemas is absent")
    text = (shared / "schemas" / "deepspeed-distributed.runtime.yaml").read_text()
    runtime = yaml.safe_load("\n".join(line for line in text.splitlines() if "{{" not in line))
    jobs = {j["name"]: j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    container = jobs["node"]["template"]["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container["args"]]


@pytest.mark.timeout(900)  # about a minute each here; a launcher that cannot reach its node hangs in ssh/orted
@pytest.mark.parametrize("runtime", ["torch-distributed", "deepspeed-distributed"])
def test_a_two_node_trainjob_trains_in_two_train_containers(runtime, client, tiny_encoder, tmp_path):
    """Kubeflow Trainer's runtimes played by two train-image containers on one network, one rank each over gloo, each
    running what ``stage_manifest`` submits plus what Trainer adds to it:

    - torch-distributed: both nodes run trainer.command (torchrun) with trainer.env and the torch plugin's PET_*
      variables (node rank; node 0 is the master);
    - deepspeed-distributed: the node runs the runtime's own command (non-root sshd on port 2222 with the job's key);
      the launcher (also a node: runLauncherAsNode) runs trainer.command with trainer.env and what the MPI plugin
      adds: the hostfile at /etc/mpi/hostfile, the OMPI variables, the key pair at /home/mpiuser/.ssh. mpirun reaches
      the node over ssh, and the remote rank gets the job's env only through ``-x``.

    The stage ends with the weights of the same stage run as 2 local processes."""
    import shutil

    import docker

    from embedpipe.data.schema import write_records
    from embedpipe.orchestration import k8s_jobs, steps
    from embedpipe.recipe import load_recipe
    from tests.test_training_run import RECIPE, SMALL, make_records, same_weights

    mpi = runtime == "deepspeed-distributed"
    recipe = load_recipe(RECIPE, [*SMALL, "training.nodes=2", "training.gpus_per_node=1",
                                  "training.launcher=trainjob", f"training.runtime={runtime}",
                                  "pipeline.artifact_root=/shared/runs"])
    name = k8s_jobs.job_name(recipe.name, "two-nodes", "stage1")
    shared = tmp_path / "shared"  # the S3 prefix of a cluster run: both containers and this process see it
    job = shared / "runs" / "jobs" / name  # what run_distributed_stage stages before it creates the job
    write_records(make_records(), job / "records.jsonl")
    shutil.copytree(tiny_encoder, job / "init")
    manifest = k8s_jobs.stage_manifest(recipe, "stage1", name, f"/shared/runs/jobs/{name}/init")
    trainer = manifest["spec"]["trainer"]
    assert manifest["spec"]["runtimeRef"]["name"] == runtime and trainer["numNodes"] == 2
    for path in [shared, *shared.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    env = {e["name"]: e["value"] for e in trainer["env"] if "value" in e}  # secretKeyRefs: S3 keys, unused here
    volumes = {str(shared): {"bind": "/shared", "mode": "rw"}}

    # the pods: (FQDN, command, env); Trainer names them <job>-<replicated job>-0-<index>.<job>
    if mpi:
        node_command = _runtime_node_command()
        assert node_command[0] == "/usr/sbin/sshd"
        code, out, err = run(client, image("train"), ["sh", "-c", "ls /etc/ssh"])
        assert code == 0 and "ssh_host_" not in out, out + err  # no host key baked into the image: the job's is used
        ssh = tmp_path / "ssh"  # the Secret Trainer's MPI plugin makes and mounts at sshAuthMountPath
        ssh.mkdir(mode=0o777)
        ssh.chmod(0o777)  # the image's ssh-keygen (uid 1000) writes the pair: the host may have no openssh-client
        code, out, err = run(client, image("train"), ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "521", "-N", "", "-f",
                                                      "/keys/id_rsa"], user="1000",
                             volumes={str(ssh): {"bind": "/keys", "mode": "rw"}})
        assert code == 0, out + err
        shutil.copy(ssh / "id_rsa.pub", ssh / "authorized_keys")
        for path in ssh.iterdir():
            os.chown(path, 1000, 1000)
            path.chmod(0o600)
        launcher, node = f"{name}-launcher-0-0.{name}", f"{name}-node-0-0.{name}"
        (tmp_path / "mpi").mkdir()
        (tmp_path / "mpi" / "hostfile").write_text(f"{launcher} slots=1\n{node} slots=1\n")  # the launcher first
        volumes.update({str(ssh): {"bind": "/home/mpiuser/.ssh", "mode": "ro"},
                        str(tmp_path / "mpi"): {"bind": "/etc/mpi", "mode": "ro"}})
        plugin = {"OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile", "OMPI_MCA_orte_keep_fqdn_hostnames": "true",
                  "OMPI_MCA_orte_set_default_slots": "1", "OMPI_MCA_plm_rsh_args": "-o ConnectionAttempts=10"}
        pods = [(node, node_command, {}),  # no job env: sshd only, as in the runtime
                (launcher, trainer["command"], {**env, **plugin})]
    else:
        nodes = [f"{name}-node-0-{i}.{name}" for i in range(2)]
        torch_plugin = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": nodes[0],
                        "PET_MASTER_PORT": "29400"}
        pods = [(host, trainer["command"], {**env, **torch_plugin, "PET_NODE_RANK": str(i)})
                for i, host in enumerate(nodes)]
    hosts = {host: f"10.213.77.{10 + i}" for i, (host, _, _) in enumerate(pods)}

    network = client.networks.create(f"embedpipe-nodes-{os.getpid()}", driver="bridge", ipam=docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=NODES_SUBNET, gateway=NODES_GATEWAY)]))
    made, logs = [], {}
    try:
        for host, command, environment in pods:
            made.append(client.containers.create(
                image("train"), command=command, user="1000", hostname=host.split(".")[0],  # the pod's name
                environment=environment, volumes=volumes, extra_hosts=hosts, network=network.name,
                networking_config={network.name: client.api.create_endpoint_config(ipv4_address=hosts[host])}))
        if mpi:
            made[0].start()
            for _ in range(60):  # the runtime's readiness probe (port 2222) gates the launcher job
                if "Server listening" in made[0].logs().decode(errors="replace"):
                    break
                made[0].reload()
                assert made[0].status == "running", made[0].logs().decode(errors="replace")
                time.sleep(1)
            else:
                pytest.fail(f"sshd did not start: {made[0].logs().decode(errors='replace')}")
        trainers = made[1:] if mpi else made
        for container in trainers:
            container.start()
        codes = [int(container.wait(timeout=600)["StatusCode"]) for container in trainers]
        logs = {host: container.logs().decode(errors="replace") for (host, _, _), container in zip(pods, made)}
        assert codes == [0] * len(trainers), "\n".join(f"== {h}\n{text[-4000:]}" for h, text in logs.items())
    finally:
        for container in made:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        with contextlib.suppress(Exception):
            network.remove()

    summary = json.loads((job / "model" / "training_summary.json").read_text())
    assert summary["world_size"] == 2, summary  # one process per node: rank 1 ran in the other container
    reference = load_recipe(RECIPE, [*SMALL, "training.gpus_per_node=2"])  # the same ranks as local processes
    steps.train(reference, "stage1", job, str(tiny_encoder), tmp_path / "reference")
    assert same_weights(tmp_path / "reference", job / "model", atol=1e-5)
