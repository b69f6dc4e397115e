"""Positive-aware negative selection for one query (NV-Retriever's TopK-PercPos and its variants).

Candidates are ranked by (combined) teacher score. A candidate is dropped when it is a known positive (by corpus id or
by identical text), when its text repeats a better-ranked candidate, or when its score is not below the threshold
derived from the query's positive score (the lowest one when the query has several positives). Of the rest, the
top ``top_k`` are taken, or ``top_k`` are sampled from the rank range ``sample_from``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedpipe.mining.config import MiningConfig


def threshold(positive_score: float, config: MiningConfig) -> float:
    """Candidates must score strictly below this. perc: pos - |pos| (1 - margin); abs: pos - margin."""
    if config.margin_type == "perc":
        return positive_score - abs(positive_score) * (1.0 - config.margin)
    return positive_score - config.margin


@dataclass
class Choice:
    positions: np.ndarray  # positions into the candidate arrays, best score first
    excluded_positive: int
    excluded_duplicate: int
    excluded_margin: int


def select_negatives(
    cand_ids: np.ndarray,
    cand_scores: np.ndarray,
    cand_text_hash: np.ndarray,
    is_positive: np.ndarray,
    positive_score: float,
    config: MiningConfig,
    rng: np.random.Generator | None = None,
) -> Choice:
    valid = cand_ids >= 0
    order = np.lexsort((cand_ids, -cand_scores))  # score descending, then corpus index: deterministic ties
    order = order[valid[order]]
    positive = is_positive[order]
    _, first = np.unique(cand_text_hash[order], return_index=True)
    repeated = np.ones(len(order), dtype=bool)
    repeated[first] = False
    repeated &= ~positive
    too_close = ~(cand_scores[order] < threshold(positive_score, config)) & ~positive & ~repeated
    kept = order[~(positive | repeated | too_close)]
    if config.sample_from is None:
        chosen = kept[: config.top_k]
    else:
        lo, hi = config.sample_from
        pool = kept[lo:hi]
        if len(pool) > config.top_k:
            rng = rng or np.random.default_rng(config.seed)
            pick = np.sort(rng.choice(len(pool), size=config.top_k, replace=False))
            chosen = pool[pick]
        else:
            chosen = pool
    return Choice(chosen, int(positive.sum()), int(repeated.sum()), int(too_close.sum()))
