"""The data mix: which records each training stage sees, by per-source and per-stage weights.

A source's weight scales its size: weight 1 takes each of its records once, 2 takes them twice (upsampling), 0.5
half of them, 0 none. When the recipe sets a stage size (``data.stage1_records`` / ``stage2_records``) the
weighted sizes are rescaled to it, keeping the proportions. Sampling is seeded, so a stage's records are the same on
every run with the same seed.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from typing import Literal

from embedpipe.data.schema import Record

log = logging.getLogger(__name__)

Stage = Literal["stage1", "stage2"]


def stage_weights(recipe, stage: Stage, weights_override: dict[str, float] | None = None) -> dict[str, float]:
    """Source name -> weight for ``stage`` (stage1 = pretraining weights, stage2 = fine-tuning weights)."""
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}")
    attr = "weight_stage1" if stage == "stage1" else "weight_stage2"
    weights = {s.name: float(getattr(s, attr)) for s in recipe.data.sources}
    stage_cfg = getattr(recipe.training, stage, None)
    for overrides in (getattr(stage_cfg, "data_weights", None), weights_override):
        for name, value in (overrides or {}).items():
            if name not in weights:
                raise ValueError(f"data weight for unknown source {name!r}; sources are: {', '.join(weights)}")
            if value < 0:
                raise ValueError(f"data weight for {name!r} must be >= 0, got {value}")
            weights[name] = float(value)
    return weights


def _take(items: list[Record], count: int, rng: random.Random) -> list[Record]:
    """``count`` items: whole passes over a shuffled copy, then a seeded sample of the rest (no duplicates within a pass)."""
    if count <= 0 or not items:
        return []
    full, rest = divmod(count, len(items))
    out: list[Record] = []
    for _ in range(full):
        out += rng.sample(items, len(items))
    out += rng.sample(items, rest)
    return out


def allocate(sizes: dict[str, int], weights: dict[str, float], total: int | None) -> dict[str, int]:
    """Records to take per source: ``weight * size``, rescaled to ``total`` (largest remainder rounding)."""
    wanted = {name: weights.get(name, 0.0) * n for name, n in sizes.items()}
    scale = 1.0 if total is None or sum(wanted.values()) == 0 else total / sum(wanted.values())
    exact = {name: w * scale for name, w in wanted.items()}
    counts = {name: int(v) for name, v in exact.items()}
    target = round(sum(exact.values()))
    for name in sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)[: max(0, target - sum(counts.values()))]:
        counts[name] += 1
    return counts


def select_stage_records(records: list[Record], recipe, stage: Stage, weights_override: dict[str, float] | None = None,
                         seed: int | None = None, task_types: list[str] | None = None) -> list[Record]:
    """The records of one stage's mix, shuffled; filtered to ``task_types`` (default: the stage's own, so a stage-2
    variant can pass its overridden list) when any are named."""
    weights = stage_weights(recipe, stage, weights_override)
    if task_types is None:
        task_types = getattr(getattr(recipe.training, stage, None), "task_types", None)
    task_types = set(task_types or [])
    by_source: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        if task_types and record.task_type not in task_types:
            continue
        by_source[record.source].append(record)
    unknown = sorted(set(by_source) - set(weights))
    if unknown:
        log.warning("records from sources not in the recipe (weight 1): %s", ", ".join(unknown))
        weights.update({name: 1.0 for name in unknown})
    total = recipe.data.stage1_records if stage == "stage1" else recipe.data.stage2_records
    counts = allocate({k: len(v) for k, v in by_source.items()}, weights, total)
    rng = random.Random(f"{recipe.data.seed if seed is None else seed}:{stage}")
    out: list[Record] = []
    for name in sorted(by_source):
        out += _take(by_source[name], counts[name], rng)
    rng.shuffle(out)
    return out


def mix_manifest(records: list[Record]) -> dict:
    """Counts per source, task type and language (and generator for synthetic records)."""
    return {
        "records": len(records),
        "by_source": dict(Counter(r.source for r in records)),
        "by_task_type": dict(Counter(r.task_type for r in records)),
        "by_language": dict(Counter(r.language for r in records)),
        "by_generator": dict(Counter(r.generator for r in records if r.generator)),
    }
