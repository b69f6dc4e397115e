"""Every collective of a training run gets tensors on the training device (NCCL takes no CPU tensors): a spy wraps
torch.distributed's collectives in two gloo processes per backend, plain torch/DDP, FSDP2 and DeepSpeed ZeRO 0-3 (on a
GPU machine it checks cuda:LOCAL_RANK), and each backend's two processes end with one process's weights."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from embedpipe.training.run import check_on_device
from tests.test_training_run import RECIPE, REPO, SMALL, launch_args, records, run_group, same_weights  # noqa: F401

STEPS = ["training.stage1.steps=2"]


@pytest.fixture(scope="module")
def one_process(tiny_encoder, records, tmp_path_factory):
    """The same two steps in this process, plain torch: what every backend's two processes must end with."""
    from embedpipe.recipe import load_recipe
    from embedpipe.training.run import train_stage

    out = tmp_path_factory.mktemp("one-process") / "export"
    train_stage(load_recipe(RECIPE, [*SMALL, *STEPS]), "stage1", records, tiny_encoder, out)
    return out

SPY = REPO / "tests" / "collective_spy.py"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "fsdp", *(f"deepspeed:zero{stage}" for stage in range(4))])
def test_every_collective_gets_tensors_on_the_training_device(backend, tiny_encoder, records, one_process,
                                                               tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SPY_OUT": str(tmp_path / "spy")}
    backend, _, zero = backend.partition(":")
    sets = [f"training.backend={backend}", *STEPS, "training.stage1.checkpoint_every=1"]
    if zero:  # DeepSpeed ZeRO 0-3 from the shipped configs; plain gloo collectives (its CPU shm op compiles C++)
        sets.append(f"training.deepspeed_config=configs/deepspeed/{zero}.json")
        env["SPY_NO_DS_SHM"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SPY)]
    run = run_group(cmd + launch_args(records, tiny_encoder, tmp_path / "out", *sets, checkpoint=tmp_path / "ck"),
                    env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / "spy" / f"rank-{rank}.json").read_text())
        assert sum(seen.values()) > 0, seen  # the spy saw the run's collectives (loss sums, gathers, ...)
    assert same_weights(tmp_path / "out", one_process, atol=1e-5)  # the global batch's gradient, split over 2


def test_a_model_off_the_training_device_is_refused_before_any_collective():
    module = torch.nn.Linear(2, 2)
    check_on_device(module, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="weight is on cpu, not on the training device meta"):
        check_on_device(module, torch.device("meta"))


def test_the_spy_refuses_a_tensor_off_the_training_device(monkeypatch):
    sys.path.insert(0, str(REPO / "tests"))
    import collective_spy

    monkeypatch.setattr(collective_spy, "training_device", lambda: torch.device("meta"))
    wrapped = collective_spy.spy("broadcast", lambda tensor, src: None)
    with pytest.raises(AssertionError, match="collective broadcast got a tensor on cpu"):
        wrapped(torch.zeros(2), 0)
    wrapped(torch.zeros(2, device="meta"), 0)
