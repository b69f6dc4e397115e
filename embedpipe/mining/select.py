"""Positive-aware negative selection for one query (NV-Retriever's TopK-PercPos and its variants).

Candidates are ranked by (combined) teacher score. A candidate is dropped when it is a known positive (by corpus id or
by identical text), when its text repeats a better-ranked candidate, or when its score is not below the threshold
derived from the query's positive score (the lowest one when the query has several positives). Of the rest, the
top ``top_k`` are taken, or ``top_k`` are sampled from the rank range ``sample_from``.

A record that came with negatives of its own keeps them first (:func:`keep_given`) and mining fills the rest up to
``top_k`` (:func:`fill_count`).
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
    excluded_given: int = 0  # candidates that are the record's own negatives (kept ahead of the mined ones)


def select_negatives(
    cand_ids: np.ndarray,
    cand_scores: np.ndarray,
    cand_text_hash: np.ndarray,
    is_positive: np.ndarray,
    positive_score: float,
    config: MiningConfig,
    rng: np.random.Generator | None = None,
    top_k: int | None = None,
    is_given: np.ndarray | None = None,
) -> Choice:
    """``is_given`` marks candidates that are the record's own negatives (kept ahead of these by :func:`keep_given`,
    so not chosen twice); ``top_k`` (default ``config.top_k``): how many to choose."""
    top_k = config.top_k if top_k is None else top_k
    valid = cand_ids >= 0
    order = np.lexsort((cand_ids, -cand_scores))  # score descending, then corpus index: deterministic ties
    order = order[valid[order]]
    given = is_given[order] if is_given is not None else np.zeros(len(order), dtype=bool)
    positive = is_positive[order] & ~given
    _, first = np.unique(cand_text_hash[order], return_index=True)
    repeated = np.ones(len(order), dtype=bool)
    repeated[first] = False
    repeated &= ~positive & ~given
    too_close = ~(cand_scores[order] < threshold(positive_score, config)) & ~positive & ~repeated & ~given
    kept = order[~(positive | given | repeated | too_close)]
    if config.sample_from is None:
        chosen = kept[:top_k]
    else:
        lo, hi = config.sample_from
        pool = kept[lo:hi]
        if len(pool) > top_k:
            rng = rng or np.random.default_rng(config.seed)
            pick = np.sort(rng.choice(len(pool), size=top_k, replace=False))
            chosen = pool[pick]
        else:
            chosen = pool
    return Choice(chosen, int(positive.sum()), int(repeated.sum()), int(too_close.sum()), int(given.sum()))


@dataclass
class Given:
    """The negatives a record came with, as kept: positions into its ``negatives``, and why the others were not."""

    positions: list[int]
    dropped_positive: int  # the same text as one of the record's positives
    dropped_duplicate: int  # the same text as an earlier given negative


def keep_given(negative_keys: list[str], positive_keys: list[str]) -> Given:
    """Which of a record's own negatives (the LLM's hard negative, the misleading label, the other labels, a public
    set's judged negatives) it keeps: all of them, in the source's order, except a text equal to one of its positives
    or to an earlier given negative. The source's order is the tie-break: the source put its hardest negative first
    (the triplet's hard negative, the misleading label before the other labels), and training takes the first k.

    Mining then fills the record up to ``top_k`` (:func:`fill_count`), excluding these texts from its candidates;
    given negatives are never cut to make room for mined ones and are not subject to the margin (the source wrote them
    as negatives; the margin guards mined candidates against unlabelled positives)."""
    positives = set(positive_keys)
    seen: set[str] = set()
    kept: list[int] = []
    dropped_positive = dropped_duplicate = 0
    for i, key in enumerate(negative_keys):
        if key in positives:
            dropped_positive += 1
        elif key in seen:
            dropped_duplicate += 1
        else:
            seen.add(key)
            kept.append(i)
    return Given(kept, dropped_positive, dropped_duplicate)


def fill_count(given: int, top_k: int) -> int:
    """How many negatives mining adds to a record that kept ``given`` of its own: the rest up to ``top_k``."""
    return max(0, top_k - given)
