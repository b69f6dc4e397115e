"""The upstream CRD schemas and their strict validator (``shared/tools/crd_validate.py``), found beside the clone:
the nearest folder above the repository that holds ``shared/`` (``../shared`` for a clone, ``../../shared`` for a
worktree under ``w/``). Tests skip without it, and fail under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CRD_KINDS = {"TrainJob", "ClusterTrainingRuntime", "InferenceService", "ServingRuntime", "ClusterServingRuntime"}


def shared_dir() -> Path | None:
    for base in REPO.parents:
        if (base / "shared" / "tools" / "crd_validate.py").is_file():
            return base / "shared"
    return None


def validator() -> Path:
    shared = shared_dir()
    if shared is None:
        if os.environ.get("CI"):
            pytest.fail("shared/tools/crd_validate.py (the CRD schemas beside the clone) is missing")
        pytest.skip("no CRD schemas beside the clone (../shared/schemas)")
    return shared / "tools" / "crd_validate.py"


def run_validator(docs: list[dict], tmp_path: Path, name: str = "docs") -> subprocess.CompletedProcess:
    path = tmp_path / f"{name.replace('/', '-')}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return subprocess.run([sys.executable, str(validator()), str(path)], capture_output=True, text=True, timeout=300)


def crd_validate(docs: list[dict], tmp_path: Path, name: str = "docs") -> str:
    """Validate ``docs`` strictly (unknown fields refused); returns the tool's last line, fails on any error."""
    run = run_validator(docs, tmp_path, name)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip().splitlines()[-1]
