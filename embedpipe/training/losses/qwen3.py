"""Qwen3-Embedding's loss (Zhang et al., 2025, "Qwen3 Embedding: Advancing Text Embedding and Reranking Through
Foundation Models", arXiv:2506.05176, sec. 3.2): every kind of negative, with a false-negative mask.

    Z_i = exp(s(q_i, d_i+)/t) + sum_k m_ik exp(s(q_i, d_ik-)/t) + sum_{j != i} m_ij exp(s(q_i, q_j)/t)
          + sum_{j != i} m_ij exp(s(d_i+, d_j)/t) + sum_{j != i} m_ij exp(s(q_i, d_j)/t)

d_j are all other rows' documents (positives and hard negatives), gathered over all devices. m = 0 where the
candidate's score exceeds s(q_i, d_i+) + 0.1 (likely a false negative) or its text equals d_i+; 1 otherwise.
"""

from __future__ import annotations

import torch

from embedpipe.training.losses.base import Candidates, ContrastiveLoss

MARGIN = 0.1


class Qwen3Loss(ContrastiveLoss):
    name = "qwen3"
    blocks = ("qp", "qn", "qq", "pp", "pn")
    gathers = True

    def __init__(self, temperature: float = 0.02, margin: float = MARGIN):
        super().__init__(temperature)
        self.margin = margin

    def allow(self, block, own, same_q, same_p):
        if block == "qp":
            return own | ~same_p
        if block == "qn":
            return ~same_p  # own hard negatives and other rows' negatives, unless identical to d_i+
        if block == "qq":
            return ~own & ~same_q
        if block == "pp":
            return ~own & ~same_p
        return ~own & ~same_p  # pn: d_i+ against other rows' negatives

    def extra_mask(self, cand: Candidates) -> torch.Tensor:
        rows = torch.arange(cand.scores.shape[0], device=cand.scores.device)
        positive = cand.scores[rows, cand.target].detach().unsqueeze(1)
        return cand.scores.detach() <= positive + self.margin
