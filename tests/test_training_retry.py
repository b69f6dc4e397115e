"""A retried training step resumes: the step runs its stage as two gloo processes (torch's elastic launcher, as it
would over a pod's GPUs), a worker killed after the step-2 checkpoint fails the step, and the retried step starts at
step 2 and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from embedpipe.data.schema import write_records
from embedpipe.orchestration import steps
from embedpipe.recipe import load_recipe
from embedpipe.training.run import FAULT_ENV
from tests.test_training_run import RECIPE, SMALL, make_records, same_weights

TWO = [*SMALL, "training.gpus_per_node=2", "training.stage1.checkpoint_every=2"]


@pytest.mark.slow
def test_a_retried_step_resumes_from_its_last_checkpoint(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_records(make_records(), tmp_path / "records" / "records.jsonl")
    recipe = load_recipe(RECIPE, TWO)
    reference = steps.train(recipe, "stage1", tmp_path / "records", str(tiny_encoder), tmp_path / "ref")
    assert reference["world_size"] == 2 and reference["start_step"] == 0

    monkeypatch.setenv(FAULT_ENV, "2")
    with pytest.raises(ChildFailedError):
        steps.train(recipe, "stage1", tmp_path / "records", str(tiny_encoder), tmp_path / "run",
                    checkpoint_dir=tmp_path / "ck")
    monkeypatch.delenv(FAULT_ENV)
    retried = steps.train(recipe, "stage1", tmp_path / "records", str(tiny_encoder), tmp_path / "run",
                          checkpoint_dir=tmp_path / "ck")
    assert retried["world_size"] == 2 and retried["start_step"] == 2, json.dumps(retried, default=str)[:500]
    assert retried["resumed_from"] == "step-00000002"
    assert same_weights(tmp_path / "ref", tmp_path / "run", atol=1e-6)


def test_checkpoints_live_under_the_runs_artifact_prefix():
    recipe = load_recipe(RECIPE, ["pipeline.artifact_root=s3://bucket/runs"])
    assert steps.checkpoint_folder(recipe, "run-1", "stage2", "mix b") == "s3://bucket/runs/run-1/checkpoints/stage2/mix-b"
    assert steps.checkpoint_folder(recipe, "{{$.pipeline_job_uuid}}", "stage1") is None  # unresolved: no folder
    assert steps.checkpoint_folder(recipe, "", "stage1") is None


def test_the_pipeline_gives_every_training_step_the_run_id():
    from kfp import compiler

    from embedpipe.pipelines.full import build_full_pipeline

    import tempfile
    from pathlib import Path

    compiled = compiler.Compiler()
    out = Path(tempfile.mkdtemp()) / "full.yaml"
    compiled.compile(build_full_pipeline(), str(out))
    text = out.read_text()
    assert text.count("{{$.pipeline_job_uuid}}") >= 2  # stage 1 and stage 2
