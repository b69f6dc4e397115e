"""Hard-negative InfoNCE plus in-batch negatives: every other row's positive and hard negatives, gathered over all
devices, join the candidates.

    Z_i = exp(s(q_i, p_i)/t) + sum_l exp(s(q_i, n_il)/t) + sum_{j != i} [exp(s(q_i, p_j)/t) + sum_l exp(s(q_i, n_jl)/t)]

The classic DPR/E5 formulation (Karpukhin et al., 2020, arXiv:2004.04906; Wang et al., 2022, arXiv:2212.03533), the
"+ in-batch" row of llama-embed-nemotron-8b's loss ablation. Columns whose text equals the row's own positive, or
that belong to a row with the same query, are masked: they are not negatives (classification labels repeat in a
batch). With gradient accumulation the batch is the micro-batch times the number of devices.
"""

from __future__ import annotations

from embedpipe.training.losses.base import ContrastiveLoss


class InBatchInfoNCE(ContrastiveLoss):
    name = "in_batch"
    blocks = ("qp", "qn")
    gathers = True

    def allow(self, block, own, same_q, same_p):
        if block == "qn":
            return own | ~same_p  # other rows' negatives are negatives for q_i too, unless equal to p_i
        return own | ~(same_q | same_p)
