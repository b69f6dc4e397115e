"""What every contrastive loss shares: the candidate table (which texts a query is contrasted with), masked
cross-entropy over it, symmetric records, and cross-device gathering with gradients.

A loss is defined by its *candidate set*: for row i (anchor q_i, own positive p_i, own hard negatives n_i*), the
columns of the score table it may draw from. Columns come in blocks, each over the (possibly gathered) batch:

- ``qp``: s(q_i, p_j)        ``qn``: s(q_i, n_j,l)      ``qq``: s(q_i, q_j)
- ``pp``: s(p_i, p_j)        ``pn``: s(p_i, n_j,l)      (document-document, "same tower" on the document side)

Scores are cosine similarities (the encoder L2-normalises) divided by the temperature; excluded columns are -inf.
The target column is always ``qp`` at the row's own index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ("qp", "qn", "qq", "pp", "pn")


@dataclass
class Candidates:
    """Scores over every column of the loss's blocks, the mask of columns a row may use, and each row's target."""

    scores: torch.Tensor  # (B, C) cosine similarities
    allowed: torch.Tensor  # (B, C) bool
    target: torch.Tensor  # (B,) column of the own positive
    columns: list[tuple[str, int, int]] = field(default_factory=list)  # (block, batch index j, negative index l)

    def allowed_labels(self, row: int) -> set[tuple[str, int, int]]:
        """The columns row ``row`` is contrasted with (tests use this to check each variant's candidate set)."""
        return {self.columns[c] for c in torch.nonzero(self.allowed[row]).flatten().tolist()}


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients flowing back to each rank's own slice."""
    _, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_keys(x: torch.Tensor) -> torch.Tensor:
    """All-gather integer text keys (no gradients)."""
    _, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def text_keys(texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Stable 63-bit keys of texts, so duplicates can be recognised across devices without sending strings."""
    import hashlib

    keys = [int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") >> 1 for t in texts]
    return torch.tensor(keys, dtype=torch.long, device=device)


@dataclass
class Keys:
    """Text identity of the batch's queries (B,), positives (B,) and negatives (B, k): used to mask duplicates."""

    q: torch.Tensor
    p: torch.Tensor
    n: torch.Tensor


class ContrastiveLoss(nn.Module):
    """Base class: subclasses say which blocks they use and which columns of them each row may use.

    ``forward(q, p, n, keys=None, symmetric=None)`` takes L2-normalised embeddings q (B, d), p (B, d), n (B, k, d)
    of this device's rows and returns the mean loss over them. Rows flagged ``symmetric`` (STS-like records, where
    query and positive are interchangeable) add the same loss with the roles of query and positive swapped, averaged.
    """

    name = "base"
    blocks: tuple[str, ...] = ("qp", "qn")
    gathers = False  # True: candidates include other rows (and other devices' rows)

    def __init__(self, temperature: float = 0.02):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    # subclasses override -------------------------------------------------------------------------------
    def allow(self, block: str, own: torch.Tensor, same_q: torch.Tensor, same_p: torch.Tensor) -> torch.Tensor:
        """Which columns of ``block`` each row may use. ``own``: column belongs to the row's own example;
        ``same_q``/``same_p``: the column's example has the same query / the column text equals the own positive."""
        raise NotImplementedError

    def extra_mask(self, cand: Candidates) -> torch.Tensor | None:
        """An optional further mask computed from the scores (Qwen3's false-negative filter)."""
        return None

    # shared ------------------------------------------------------------------------------------------
    def candidates(self, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, keys: Keys | None = None) -> Candidates:
        if q.dim() != 2 or p.shape != q.shape or n.dim() != 3 or n.shape[0] != q.shape[0]:
            raise ValueError(f"expected q (B,d), p (B,d), n (B,k,d); got {tuple(q.shape)}, {tuple(p.shape)}, {tuple(n.shape)}")
        b, k = q.shape[0], n.shape[1]
        rank, _ = world()
        offset = rank * b if self.gathers else 0
        if self.gathers:
            qa, pa, na = gather_with_grad(q), gather_with_grad(p), gather_with_grad(n)
        else:
            qa, pa, na = q, p, n
        g = qa.shape[0]
        device = q.device
        rows = torch.arange(b, device=device) + offset
        if keys is None:  # no text identity: every example distinct
            ids = torch.arange(g, device=device)
            kq = kp = ids
            kn = -(ids.unsqueeze(1) * max(k, 1) + torch.arange(k, device=device) + 1)
        else:
            kq, kp, kn = gather_keys(keys.q) if self.gathers else keys.q, gather_keys(keys.p) if self.gathers else keys.p, \
                gather_keys(keys.n) if self.gathers else keys.n
        my_q, my_p = kq[rows], kp[rows]
        scores, allowed, columns = [], [], []
        col_j = torch.arange(g, device=device)
        for block in self.blocks:
            if block[1] == "n" and k == 0:  # no hard negatives (hard_negatives: 0): the block has no columns
                continue
            anchor = q if block[0] == "q" else p
            if block[1] in "qp":
                other = qa if block[1] == "q" else pa
                s = anchor @ other.T  # (b, g)
                own = col_j.unsqueeze(0) == rows.unsqueeze(1)
                same_q = kq.unsqueeze(0) == my_q.unsqueeze(1)
                col_keys = kq if block[1] == "q" else kp
                same_p = col_keys.unsqueeze(0) == my_p.unsqueeze(1)
                columns += [(block, j, -1) for j in range(g)]
            else:
                s = anchor @ na.reshape(g * k, -1).T  # (b, g*k)
                owner = col_j.repeat_interleave(k)
                own = owner.unsqueeze(0) == rows.unsqueeze(1)
                same_q = kq[owner].unsqueeze(0) == my_q.unsqueeze(1)
                same_p = kn.reshape(-1).unsqueeze(0) == my_p.unsqueeze(1)
                columns += [(block, j, l) for j in range(g) for l in range(k)]
            scores.append(s)
            allowed.append(self.allow(block, own, same_q, same_p))
        target = rows  # "qp" is always the first block
        cand = Candidates(torch.cat(scores, 1), torch.cat(allowed, 1), target, columns)
        cand.allowed[torch.arange(b, device=device), target] = True
        extra = self.extra_mask(cand)
        if extra is not None:
            cand.allowed = cand.allowed & extra
            cand.allowed[torch.arange(b, device=device), target] = True
        return cand

    def row_losses(self, q, p, n, keys: Keys | None = None) -> torch.Tensor:
        cand = self.candidates(q, p, n, keys)
        logits = (cand.scores / self.temperature).masked_fill(~cand.allowed, float("-inf"))
        return F.cross_entropy(logits.float(), cand.target, reduction="none")

    def forward(self, q, p, n, keys: Keys | None = None, symmetric: torch.Tensor | None = None) -> torch.Tensor:
        losses = self.row_losses(q, p, n, keys)
        if symmetric is not None and _any_rank(bool(symmetric.any()), self.gathers, q.device):
            swapped = Keys(keys.p, keys.q, keys.n) if keys is not None else None
            back = self.row_losses(p, q, n, swapped)
            w = symmetric.to(losses.dtype)
            losses = (losses + w * back) / (1 + w)
        return losses.mean()


def _any_rank(flag: bool, collective: bool, device) -> bool:
    """``flag`` on any rank: losses that gather must run the same collectives on every rank."""
    _, size = world()
    if not collective or size == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
