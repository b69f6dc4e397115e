"""Contrastive losses, one per file; ``build_loss(name, temperature)`` picks one by its recipe name."""

from __future__ import annotations

from embedpipe.training.losses.base import Candidates, ContrastiveLoss, Keys, gather_with_grad, text_keys
from embedpipe.training.losses.gecko import GeckoLoss
from embedpipe.training.losses.gemini import GeminiLoss
from embedpipe.training.losses.hard_negative_infonce import HardNegativeInfoNCE
from embedpipe.training.losses.in_batch import InBatchInfoNCE
from embedpipe.training.losses.qwen3 import Qwen3Loss
from embedpipe.training.losses.same_tower import SameTowerInfoNCE

LOSSES: dict[str, type[ContrastiveLoss]] = {
    cls.name: cls for cls in (HardNegativeInfoNCE, InBatchInfoNCE, SameTowerInfoNCE, GeckoLoss, Qwen3Loss, GeminiLoss)
}


def build_loss(name: str, temperature: float = 0.02) -> ContrastiveLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of: {', '.join(LOSSES)}")
    return LOSSES[name](temperature=temperature)


__all__ = ["LOSSES", "build_loss", "Candidates", "ContrastiveLoss", "Keys", "gather_with_grad", "text_keys"]
