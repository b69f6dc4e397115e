"""Variants that gather candidates across devices: on 2 gloo processes they equal the one-process loss over the
whole batch, and gradients flow back through the all-gather to the rows each rank owns."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

NAMES = ["in_batch", "same_tower", "gecko", "qwen3", "gemini"]


def full_batch(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    q, p, n = (F.normalize(torch.randn(*s, generator=g), dim=-1) for s in ((4, 8), (4, 8), (4, 2, 8)))
    return q, p, n


def reference():
    """One process, the whole batch: loss and d(loss)/d(inputs) per variant."""
    from embedpipe.training.losses import build_loss

    out = {}
    for name in NAMES:
        q, p, n = (x.clone().requires_grad_(True) for x in full_batch())
        loss = build_loss(name, 0.05)(q, p, n)
        loss.backward()
        out[name] = (loss.item(), q.grad.clone(), p.grad.clone(), n.grad.clone())
    return out


def _worker(rank: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from embedpipe.training.losses import build_loss

    try:
        for name in NAMES:
            q, p, n = (x[rank * 2:(rank + 1) * 2].clone().requires_grad_(True) for x in full_batch())
            loss = build_loss(name, 0.05)(q, p, n)
            # DDP averages gradients over ranks: backward of loss / world_size gives the global-mean gradient
            (loss / 2).backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            results[(rank, name)] = (total.item() / 2, q.grad.clone(), p.grad.clone(), n.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_variants_match_the_one_process_loss_and_gradients():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(port, results), nprocs=2, join=True)
    want = reference()
    for name in NAMES:
        loss, gq, gp, gn = want[name]
        for rank in (0, 1):
            got_loss, q, p, n = results[(rank, name)]
            assert got_loss == pytest.approx(loss, rel=1e-5), name
            # each rank's input gradients include what the OTHER rank's loss sent back through the all-gather
            rows = slice(rank * 2, (rank + 1) * 2)
            assert torch.allclose(q, gq[rows], atol=1e-6) and torch.allclose(p, gp[rows], atol=1e-6), name
            assert torch.allclose(n, gn[rows], atol=1e-6), name
