"""Constant-memory score statistics match numpy on the same values."""

from __future__ import annotations

import numpy as np

from embedpipe.mining.stats import Distribution


def test_distribution_matches_numpy():
    values = np.random.default_rng(0).normal(0.4, 0.15, 10_000).clip(-1, 1)
    dist = Distribution()
    for part in np.array_split(values, 7):
        dist.add(part)
    s = dist.summary()
    assert s["count"] == 10_000
    assert abs(s["mean"] - values.mean()) < 1e-4 and abs(s["std"] - values.std()) < 1e-4
    for q, key in ((0.25, "p25"), (0.5, "p50"), (0.75, "p75")):
        assert abs(s[key] - np.quantile(values, q)) <= 0.001  # histogram bin width
    assert s["min"] == round(values.min(), 4) and s["max"] == round(values.max(), 4)
