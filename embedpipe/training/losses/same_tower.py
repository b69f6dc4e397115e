"""Hard-negative InfoNCE plus same-tower negatives: other queries for the query (q-q) and other positives for the
positive (d-d), gathered over all devices; no cross-tower in-batch documents.

    Z_i = exp(s(q_i, p_i)/t) + sum_l exp(s(q_i, n_il)/t) + sum_{j != i} exp(s(q_i, q_j)/t) + sum_{j != i} exp(s(p_i, p_j)/t)

The same-tower terms of the "improved contrastive loss" of GTE (Li et al., 2023, "Towards General Text Embeddings
with Multi-stage Contrastive Learning", arXiv:2308.03281), isolated from its in-batch term so the ablation measures
them alone (llama-embed-nemotron-8b's "+ same-tower" row). Duplicates of the row's own query/positive are masked.
"""

from __future__ import annotations

from embedpipe.training.losses.base import ContrastiveLoss


class SameTowerInfoNCE(ContrastiveLoss):
    name = "same_tower"
    blocks = ("qp", "qn", "qq", "pp")
    gathers = True

    def allow(self, block, own, same_q, same_p):
        if block == "qp" or block == "qn":
            return own
        if block == "qq":
            return ~own & ~same_q
        return ~own & ~same_p  # pp
