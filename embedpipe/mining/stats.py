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
        self.given_negatives = Counter()  # the negatives records came with: kept, or dropped and why
        self.mined_negatives = 0
        self.by_type: dict[str, Counter] = {}  # task type -> records in / out / negatives given / mined
        self.by_source: dict[str, Counter] = {}
        self.positive = Distribution()
        self.negative = Distribution()
        self.difference = Distribution(-2.0, 2.0, 4000)
        self._pending: tuple[list, list, list] = ([], [], [])

    def missing(self, record, skipped: bool) -> None:
        if skipped:
            self.skipped_missing_positive += 1
            self.by_type.setdefault(record.task_type, Counter())["skipped_missing_positive"] += 1
            self.by_source.setdefault(record.source, Counter())["skipped_missing_positive"] += 1
        else:
            self.embedded_missing_positive += 1
        if len(self.missing_examples) < 10:
            self.missing_examples.append(record.id)

    def record_in(self, record) -> None:
        self.records_in += 1
        for table, key in ((self.by_type, record.task_type), (self.by_source, record.source)):
            table.setdefault(key, Counter())["records_in"] += 1

    def given(self, count: int, kept) -> None:
        """A record's own negatives: ``count`` it came with, ``kept`` (:class:`~embedpipe.mining.select.Given`)."""
        self.given_negatives["in"] += count
        self.given_negatives["kept"] += len(kept.positions)
        self.given_negatives["dropped_equal_to_positive"] += kept.dropped_positive
        self.given_negatives["dropped_duplicate"] += kept.dropped_duplicate

    def chosen(self, positive_score: float, mined_scores: np.ndarray, choice, own=None, record=None) -> None:
        """One record written: ``mined_scores`` of the negatives mining chose, ``own`` the ones it came with."""
        own_scores = list(own.scores) if own is not None else []
        negative_scores = np.concatenate([np.asarray(own_scores, dtype=np.float64),
                                          np.asarray(mined_scores, dtype=np.float64)])
        self.records_out += 1
        self.mined_negatives += len(mined_scores)
        self.negatives_per_record[len(negative_scores)] += 1
        if record is not None:
            for table, key in ((self.by_type, record.task_type), (self.by_source, record.source)):
                counts = table.setdefault(key, Counter())
                counts["records_out"] += 1
                counts["negatives_given"] += len(own_scores)
                counts["negatives_mined"] += len(mined_scores)
                counts["fewer_than_k"] += len(negative_scores) < self.top_k
        pos, neg, diff = self._pending  # histogrammed once per block by flush(): cheap per record
        pos.append(positive_score)
        neg.append(negative_scores)
        diff.append(positive_score - neg[-1])
        self.excluded["positive"] += choice.excluded_positive
        self.excluded["duplicate_text"] += choice.excluded_duplicate
        self.excluded["margin"] += choice.excluded_margin
        self.excluded["given"] += getattr(choice, "excluded_given", 0)

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
            "given_negatives": dict(self.given_negatives),
            "mined_negatives": self.mined_negatives,
            "by_task_type": {k: dict(v) for k, v in sorted(self.by_type.items())},
            "by_source": {k: dict(v) for k, v in sorted(self.by_source.items())},
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
    given = summary.get("given_negatives") or {}
    if given:
        counts.add_row("negatives records came with", ", ".join(f"{k}: {v:,}" for k, v in given.items()))
    console.print(counts)
    if summary.get("by_task_type"):
        types = Table(title="records per task type")
        columns = ["records_in", "records_out", "skipped_missing_positive", "negatives_given", "negatives_mined",
                   "fewer_than_k"]
        types.add_column("task type")
        for column in columns:
            types.add_column(column.replace("_", " "), justify="right")
        for name, row in summary["by_task_type"].items():
            types.add_row(name, *(f"{row.get(c, 0):,}" for c in columns))
        console.print(types)
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
    for name, row in summary.get("by_task_type", {}).items():
        metrics[f"mining.records_out.{name}"] = float(row.get("records_out", 0))
    mlflow.log_metrics(metrics)
    mlflow.log_dict(summary, "mining/summary.json")
    return True
