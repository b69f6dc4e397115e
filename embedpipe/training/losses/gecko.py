"""Gecko's loss (Lee et al., 2024, "Gecko: Versatile Text Embeddings Distilled from Large Language Models",
arXiv:2403.20327, eq. 2): in-batch positives, the row's own hard negative(s) and the other queries (same tower).

    Z_i = sum_j exp(s(q_i, p_j)/t) + sum_l exp(s(q_i, n_il)/t) + sum_{j != i} exp(s(q_i, q_j)/t)

Other rows' hard negatives are not candidates. Gathered over all devices; in-batch duplicates of the own
positive/query are masked.
"""

from __future__ import annotations

from embedpipe.training.losses.base import ContrastiveLoss


class GeckoLoss(ContrastiveLoss):
    name = "gecko"
    blocks = ("qp", "qn", "qq")
    gathers = True

    def allow(self, block, own, same_q, same_p):
        if block == "qp":
            return own | ~(same_q | same_p)
        if block == "qn":
            return own
        return ~own & ~same_q  # qq
