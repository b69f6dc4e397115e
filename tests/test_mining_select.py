"""The selection rule alone (no model): thresholds, exclusions, k, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from embedpipe.mining.config import MiningConfig
from embedpipe.mining.select import select_negatives, threshold


def pick(scores, config, positive=0.8, is_positive=None, text_hash=None, ids=None, rng=None):
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.arange(len(scores)) if ids is None else np.asarray(ids)
    text_hash = np.arange(len(scores), dtype=np.uint64) if text_hash is None else np.asarray(text_hash, dtype=np.uint64)
    is_positive = np.zeros(len(scores), bool) if is_positive is None else np.asarray(is_positive)
    return select_negatives(ids, scores, text_hash, is_positive, positive, config, rng)


def test_perc_margin_keeps_only_scores_below_095_of_positive():
    cfg = MiningConfig(top_k=3, candidates=10)
    choice = pick([0.9, 0.77, 0.76, 0.7, 0.5, 0.4], cfg, positive=0.8)  # 0.95 * 0.8 = 0.76 (strictly below)
    assert choice.positions.tolist() == [3, 4, 5]
    assert choice.excluded_margin == 3


def test_threshold_for_negative_positive_scores_and_abs_margin():
    assert threshold(-0.5, MiningConfig()) == pytest.approx(-0.525)  # stricter, never looser, below zero
    assert threshold(0.8, MiningConfig(margin_type="abs", margin=0.1)) == pytest.approx(0.7)


def test_positives_duplicates_and_padding_are_excluded():
    cfg = MiningConfig(top_k=4, candidates=10)
    choice = pick([0.5, 0.45, 0.44, 0.3, 0.2, -1.0], cfg, is_positive=[True, False, False, False, False, False],
                  text_hash=[1, 2, 2, 3, 4, 5], ids=[0, 1, 2, 3, 4, -1])
    assert choice.positions.tolist() == [1, 3, 4]  # 2 repeats 1's text; -1 is FAISS padding
    assert (choice.excluded_positive, choice.excluded_duplicate) == (1, 1)


def test_k_is_respected_and_ties_break_by_corpus_index():
    cfg = MiningConfig(top_k=2, candidates=10)
    choice = pick([0.3, 0.3, 0.3], cfg, ids=[9, 4, 7])
    assert choice.positions.tolist() == [1, 2]


def test_sampling_from_a_rank_range_is_seeded():
    cfg = MiningConfig(top_k=3, candidates=20, sample_from=(2, 12))
    scores = np.linspace(0.7, 0.1, 20)
    a = pick(scores, cfg, rng=np.random.default_rng(5)).positions
    b = pick(scores, cfg, rng=np.random.default_rng(5)).positions
    assert a.tolist() == b.tolist() and len(a) == 3 and all(2 <= p < 12 for p in a)
    assert sorted(a.tolist()) == a.tolist()  # best first


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="perc margin"):
        MiningConfig(margin=1.5)
    with pytest.raises(ValueError, match="sample_from"):
        MiningConfig(top_k=4, sample_from=(0, 2))
    with pytest.raises(ValueError, match="candidates"):
        MiningConfig(top_k=8, candidates=4)


def test_given_negatives_are_kept_in_source_order_without_positives_or_repeats():
    from embedpipe.mining.select import fill_count, keep_given

    given = keep_given(["hard", "label b", "pos", "hard", "label c"], ["pos"])
    assert given.positions == [0, 1, 4]  # the source's order: its hardest negative first
    assert (given.dropped_positive, given.dropped_duplicate) == (1, 1)
    assert fill_count(len(given.positions), 4) == 1 and fill_count(5, 4) == 0  # never cut to make room


def test_mining_fills_up_to_k_and_never_picks_a_given_negative_twice():
    cfg = MiningConfig(top_k=4, candidates=10)
    scores = np.asarray([0.7, 0.6, 0.5, 0.4], dtype=np.float32)
    is_given = np.asarray([True, False, False, False])  # the candidate ranked first is the record's own negative
    choice = select_negatives(np.arange(4), scores, np.arange(4, dtype=np.uint64), np.zeros(4, bool), 0.9, cfg,
                              top_k=2, is_given=is_given)
    assert choice.positions.tolist() == [1, 2]
    assert (choice.excluded_given, choice.excluded_positive, choice.excluded_margin) == (1, 0, 0)
    none = select_negatives(np.arange(4), scores, np.arange(4, dtype=np.uint64), np.zeros(4, bool), 0.9, cfg, top_k=0)
    assert none.positions.tolist() == []
