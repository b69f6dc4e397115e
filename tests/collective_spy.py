"""Run ``embedpipe.training.launch`` with every torch.distributed collective wrapped by a spy that refuses a tensor
not on the training device (cuda:LOCAL_RANK when there is a GPU, else the CPU), as NCCL would. Each rank writes
how many collectives it saw to $SPY_OUT/rank-N.json. Used by tests/test_training_collectives.py."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

NAMES = ["broadcast", "all_reduce", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
         "reduce_scatter_tensor", "all_to_all_single", "gather", "scatter", "_broadcast_coalesced"]
SEEN: dict[str, int] = {}


def training_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)


def spy(name, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        device = training_device()
        for t in [*tensors(list(args)), *tensors(list(kwargs.values()))]:
            if t.device.type != device.type or (device.index is not None and t.device.index != device.index):
                raise AssertionError(f"collective {name} got a tensor on {t.device}, training device is {device}")
        SEEN[name] = SEEN.get(name, 0) + 1
        return fn(*args, **kwargs)
    return wrapped


def install() -> None:
    for name in NAMES:
        if hasattr(dist, name):
            setattr(dist, name, spy(name, getattr(dist, name)))


def main() -> int:
    install()
    if os.environ.get("SPY_NO_DS_SHM"):  # DeepSpeed on CPU: plain gloo collectives instead of its shm op
        import deepspeed.comm.torch as ds_torch
        ds_torch.build_shm_op = lambda: None
    from embedpipe.training.launch import main as launch_main

    rc = launch_main(sys.argv[1:])
    out = Path(os.environ["SPY_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(SEEN))
    return rc


if __name__ == "__main__":
    sys.exit(main())
