"""The losses: the default against a hand computation, each variant's candidate set, masks, symmetric rows."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from embedpipe.training.losses import LOSSES, Keys, build_loss, text_keys


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_default_loss_equals_hand_computed_value():
    c, d = 0.79, math.sqrt(1 - 0.79**2)
    e, f = 0.82, math.sqrt(1 - 0.82**2)
    q = unit([1.0, 0.0], [0.0, 1.0])
    p = unit([0.8, 0.6], [0.6, 0.8])
    n = torch.stack([unit([c, d]), unit([f, e])])  # (B=2, k=1, d=2)
    t = 0.02
    # row 0: s(q,p)=0.80, s(q,n)=0.79 ; row 1: s(q,p)=0.80, s(q,n)=0.82 (the negative wins)
    row0 = -math.log(math.exp(0.80 / t) / (math.exp(0.80 / t) + math.exp(0.79 / t)))
    row1 = -math.log(math.exp(0.80 / t) / (math.exp(0.80 / t) + math.exp(0.82 / t)))
    loss = build_loss("hard_negative_infonce", t)
    assert loss(q, p, n).item() == pytest.approx((row0 + row1) / 2, rel=1e-4)
    # the other row's positive is NOT a candidate: making it identical to q_0 leaves row 0 unchanged
    p2 = p.clone()
    p2[1] = q[0]
    assert loss.row_losses(q, p2, n)[0].item() == pytest.approx(row0, rel=1e-4)


def test_default_fast_path_matches_generic_candidate_table():
    torch.manual_seed(0)
    q, p, n = (F.normalize(torch.randn(*s), dim=-1) for s in ((4, 8), (4, 8), (4, 3, 8)))
    loss = build_loss("hard_negative_infonce", 0.05)
    cand = loss.candidates(q, p, n)
    logits = (cand.scores / 0.05).masked_fill(~cand.allowed, float("-inf"))
    generic = F.cross_entropy(logits, cand.target)
    assert loss(q, p, n).item() == pytest.approx(generic.item(), rel=1e-5)


B, K = 3, 2


def batch():
    torch.manual_seed(1)
    q, p, n = (F.normalize(torch.randn(*s), dim=-1) for s in ((B, 8), (B, 8), (B, K, 8)))
    return q, p, n


EXPECTED = {  # the candidate set of row 0 (besides its own positive ("qp", 0, -1))
    "hard_negative_infonce": {("qn", 0, 0), ("qn", 0, 1)},
    "in_batch": {("qn", 0, 0), ("qn", 0, 1), ("qp", 1, -1), ("qp", 2, -1)} | {("qn", j, l) for j in (1, 2) for l in range(K)},
    "same_tower": {("qn", 0, 0), ("qn", 0, 1), ("qq", 1, -1), ("qq", 2, -1), ("pp", 1, -1), ("pp", 2, -1)},
    "gecko": {("qn", 0, 0), ("qn", 0, 1), ("qp", 1, -1), ("qp", 2, -1), ("qq", 1, -1), ("qq", 2, -1)},
    "qwen3": {("qn", j, l) for j in range(B) for l in range(K)} | {("qp", 1, -1), ("qp", 2, -1), ("qq", 1, -1),
              ("qq", 2, -1), ("pp", 1, -1), ("pp", 2, -1)} | {("pn", j, l) for j in (1, 2) for l in range(K)},
    "gemini": {("qn", 0, 0), ("qn", 0, 1), ("qp", 1, -1), ("qp", 2, -1)},
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_candidate_set_of_each_variant(name):
    q, p, n = batch()
    loss = build_loss(name, 1.0)  # t=1: Qwen3's false-negative filter (score > positive + 0.1) needs real scores
    if name == "qwen3":
        loss.margin = 10.0  # switch the score filter off here; tested on its own below
    cand = loss.candidates(q, p, n)
    assert cand.allowed_labels(0) == EXPECTED[name] | {("qp", 0, -1)}
    assert torch.isfinite(loss(q, p, n))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_no_hard_negatives_leaves_the_in_batch_candidates(name):
    """``hard_negatives: 0``: each loss keeps its candidates but the hard-negative blocks (none for the default)."""
    q, p, n = batch()
    empty = n[:, :0]
    loss = build_loss(name, 1.0)
    if name == "qwen3":
        loss.margin = 10.0
    if name != "hard_negative_infonce":
        kept = {c for c in EXPECTED[name] if c[0][1] != "n"} | {("qp", 0, -1)}
        assert loss.candidates(q, p, empty).allowed_labels(0) == kept
    assert torch.isfinite(loss(q, p, empty))
    if name == "in_batch":  # the classic in-batch softmax over the positives
        assert loss(q, p, empty).item() == pytest.approx(F.cross_entropy(q @ p.T, torch.arange(len(q))).item(), rel=1e-5)


def test_duplicate_positive_text_is_not_an_in_batch_negative():
    q, p, n = batch()
    p[2] = p[0]  # e.g. two classification records with the same label
    keys = Keys(text_keys(["a", "b", "c"]), text_keys(["x", "y", "x"]), text_keys([f"n{i}" for i in range(B * K)]).view(B, K))
    for name in ("in_batch", "gecko", "gemini", "qwen3"):
        labels = build_loss(name).candidates(q, p, n, keys).allowed_labels(0)
        assert ("qp", 2, -1) not in labels and ("qp", 0, -1) in labels, name


def test_gemini_masks_rows_with_the_same_query():
    q, p, n = batch()
    keys = Keys(text_keys(["a", "b", "a"]), text_keys(["x", "y", "z"]), text_keys([f"n{i}" for i in range(B * K)]).view(B, K))
    assert ("qp", 2, -1) not in build_loss("gemini").candidates(q, p, n, keys).allowed_labels(0)


def test_qwen3_masks_candidates_scoring_above_the_positive_plus_margin():
    q = unit([1.0, 0.0], [0.0, 1.0])
    p = unit([0.6, 0.8], [0.0, 1.0])  # s(q0, p0) = 0.6
    n = torch.stack([unit([1.0, 0.0]), unit([0.0, -1.0])])  # s(q0, n00) = 1.0 > 0.7: a likely false negative
    labels = build_loss("qwen3").candidates(q, p, n).allowed_labels(0)
    assert ("qn", 0, 0) not in labels
    assert ("qn", 1, 0) in labels  # s = 0 < 0.7


def test_symmetric_rows_average_both_directions():
    q, p, n = batch()
    loss = build_loss("hard_negative_infonce")
    forward = loss.row_losses(q, p, n)
    backward = loss.row_losses(p, q, n)
    sym = torch.tensor([True, False, True])
    want = torch.stack([(forward[0] + backward[0]) / 2, forward[1], (forward[2] + backward[2]) / 2]).mean()
    assert loss(q, p, n, symmetric=sym).item() == pytest.approx(want.item(), rel=1e-6)


def test_unknown_loss_name_is_an_error():
    with pytest.raises(ValueError, match="unknown loss 'infonce'"):
        build_loss("infonce")
