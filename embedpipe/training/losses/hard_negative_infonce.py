"""The default loss: InfoNCE over the positive and the row's own mined hard negatives only.

    L = -1/B sum_i log( exp(s(q_i, p_i)/t) / (exp(s(q_i, p_i)/t) + sum_l exp(s(q_i, n_il)/t)) )

s is cosine similarity and t = 0.02. No in-batch and no same-tower negatives: llama-embed-nemotron-8b
(Babakhin et al., 2025, "Llama-Embed-Nemotron-8B: A Universal Text Embedding Model for Multilingual and
Cross-Lingual Tasks", arXiv:2511.07025) found these hurt when hard negatives are mined with a positive-aware margin
(NV-Retriever, Moreira et al., 2024, arXiv:2407.15831). sentence-transformers' MultipleNegativesRankingLoss cannot
express it: it always adds the other rows' documents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedpipe.training.losses.base import ContrastiveLoss, Keys


class HardNegativeInfoNCE(ContrastiveLoss):
    name = "hard_negative_infonce"
    blocks = ("qp", "qn")
    gathers = False

    def allow(self, block, own, same_q, same_p):
        return own

    def row_losses(self, q, p, n, keys: Keys | None = None) -> torch.Tensor:
        """(1 + k) scores per row, computed directly (no B x B table): the hot path of every training step."""
        pos = (q * p).sum(-1, keepdim=True)  # (B, 1)
        neg = torch.einsum("bd,bkd->bk", q, n)  # (B, k)
        logits = torch.cat([pos, neg], dim=1).float() / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device), reduction="none")
