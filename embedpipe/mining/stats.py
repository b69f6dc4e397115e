"""Mining statistics in constant memory (score histograms, not score lists), printed with rich and logged to MLflow."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

log = logging.getLogger(__name__)


class Distribution:
    """Count, mean, std, min, max exactly; quantiles from a fine histogram over [lo, hi] (bin width 0.001)."""

    def __init__(self, lo: float = -1.0, hi: float = 1.0, bins: int = 2000):
        self.edges = np.linspace(lo, hi, bins + 1)
        self.hist = np.zeros(bins, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add(self, values) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if not values.size:
            return
        self.count += values.size
        self.total += float(values.sum())
        self.total_sq += float((values**2).sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        clipped = np.clip(values, self.edges[0], self.edges[-1])
        self.hist += np.histogram(clipped, bins=self.edges)[0]

    def quantile(self, q: float) -> float:
        cum = np.cumsum(self.hist)
        pos = int(np.searchsorted(cum, q * self.count))
        return float(np.clip((self.edges[pos] + self.edges[pos + 1]) / 2, self.min, self.max))

    def summary(self) -> dict:
        if not self.count:
            return {"count": 0}
        mean = self.total / self.count
        std = max(self.total_sq / self.count - mean**2, 0.0) ** 0.5
        return {"count": self.count, "mean": round(mean, 4), "std": round(std, 4), "min": round(self.min, 4),
                "p25": round(self.quantile(0.25), 4), "p50": round(self.quantile(0.5), 4),
                "p75": round(self.quantile(0.75), 4), "max": round(self.max, 4)}


class MiningStats:
    def __init__(self, top_k: int):
        self.top_k = top_k
        self.records_in = 0
        self.records_out = 0
        self.skipped_missing_positive = 0
        self.embedded_missing_positive = 0
        self.missing_examples: list[str] = []
        self.negatives_per_record: Counter = Counter()
        self.excluded = Counter()
        self.positive = Distribution()
        self.negative = Distribution()
        self.difference = Distribution(-2.0, 2.0, 4000)
        self._pending: tuple[list, list, list] = ([], [], [])

    def missing(self, record_id: str, skipped: bool) -> None:
        if skipped:
            self.skipped_missing_positive += 1
        else:
            self.embedded_missing_positive += 1
        if len(self.missing_examples) < 10:
            self.missing_examples.append(record_id)

    def chosen(self, positive_score: float, negative_scores: np.ndarray, choice) -> None:
        self.records_out += 1
        self.negatives_per_record[len(negative_scores)] += 1
        pos, neg, diff = self._pending  # histogrammed once per block by flush(): cheap per record
        pos.append(positive_score)
        neg.append(np.asarray(negative_scores, dtype=np.float64))
        diff.append(positive_score - neg[-1])
        self.excluded["positive"] += choice.excluded_positive
        self.excluded["duplicate_text"] += choice.excluded_duplicate
        self.excluded["margin"] += choice.excluded_margin

    def flush(self) -> None:
        pos, neg, diff = self._pending
        if pos:
            self.positive.add(pos)
            self.negative.add(np.concatenate(neg))
            self.difference.add(np.concatenate(diff))
        self._pending = ([], [], [])

    def to_dict(self) -> dict:
        self.flush()
        fewer = sum(n for k, n in self.negatives_per_record.items() if k < self.top_k)
        return {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "skipped_missing_positive": self.skipped_missing_positive,
            "embedded_missing_positive": self.embedded_missing_positive,
            "missing_positive_examples": self.missing_examples,
            "fewer_than_k": fewer,
            "no_negatives": self.negatives_per_record.get(0, 0),
            "negatives_per_record": {str(k): v for k, v in sorted(self.negatives_per_record.items())},
            "candidates_excluded": dict(self.excluded),
            "scores": {"positive": self.positive.summary(), "negative": self.negative.summary(),
                       "difference": self.difference.summary()},
        }


def print_summary(summary: dict, console=None) -> None:
    """The mining summary as rich tables (counts, then score distributions like sentence-transformers prints)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    counts = Table(title="hard-negative mining", show_header=False)
    for key in ("records_in", "records_out", "skipped_missing_positive", "embedded_missing_positive",
                "fewer_than_k", "no_negatives"):
        counts.add_row(key, f"{summary[key]:,}")
    counts.add_row("negatives per record", ", ".join(f"{k}: {v}" for k, v in summary["negatives_per_record"].items()))
    counts.add_row("excluded candidates", ", ".join(f"{k}: {v:,}" for k, v in summary["candidates_excluded"].items()))
    counts.add_row("index", f"{summary['index']} ({summary['corpus_documents']:,} documents)")
    counts.add_row("seconds", ", ".join(f"{k}: {v}" for k, v in summary["seconds"].items()))
    console.print(counts)
    scores = Table(title="teacher scores")
    scores.add_column("metric")
    for name in ("positive", "negative", "difference"):
        scores.add_column(name, justify="right")
    for metric in ("count", "mean", "std", "min", "p25", "p50", "p75", "max"):
        scores.add_row(metric, *(str(summary["scores"][n].get(metric, "-")) for n in ("positive", "negative", "difference")))
    console.print(scores)


def log_to_mlflow(summary: dict) -> bool:
    """Metrics and the summary JSON to the active MLflow run; nothing when no run is active."""
    from embedpipe import tracking

    if not tracking.active():
        return False
    import mlflow

    metrics = {f"mining.{k}": float(summary[k]) for k in
               ("records_in", "records_out", "skipped_missing_positive", "embedded_missing_positive",
                "fewer_than_k", "no_negatives", "corpus_documents")}
    for name, dist in summary["scores"].items():
        for stat in ("mean", "std", "p50"):
            if stat in dist:
                metrics[f"mining.score.{name}.{stat}"] = float(dist[stat])
    for key, value in summary["candidates_excluded"].items():
        metrics[f"mining.excluded.{key}"] = float(value)
    mlflow.log_metrics(metrics)
    mlflow.log_dict(summary, "mining/summary.json")
    return True
