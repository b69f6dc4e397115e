"""Gemini Embedding's loss (Lee et al., 2025, "Gemini Embedding: Generalizable Embeddings from Gemini",
arXiv:2503.07891, sec. 3.2): the row's hard negative(s) plus the in-batch positives, with duplicates masked.

    L = -1/B sum_i log( exp(s(q_i, p_i+)/t) / (sum_l exp(s(q_i, p_il-)/t) + sum_j mask(i, j) exp(s(q_i, p_j+)/t)) )

mask(i, j) = 0 when j != i and q_i = q_j or p_i+ = p_j+ (same question, or the target itself repeated: common for
classification labels), else 1. No same-tower terms and no other rows' hard negatives. Gathered over all devices.
"""

from __future__ import annotations

from embedpipe.training.losses.base import ContrastiveLoss


class GeminiLoss(ContrastiveLoss):
    name = "gemini"
    blocks = ("qp", "qn")
    gathers = True

    def allow(self, block, own, same_q, same_p):
        if block == "qp":
            return own | ~(same_q | same_p)
        return own  # qn: only the row's own hard negatives
