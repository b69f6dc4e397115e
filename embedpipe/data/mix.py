"""The data mix: which records each training stage sees, by per-source and per-stage weights.

A source's weight scales its size: weight 1 takes each of its records once, 2 takes them twice (upsampling), 0.5
half of them, 0 none. When the recipe sets a stage size (``data.stage1_records`` / ``stage2_records``) the
weighted sizes are rescaled to it, keeping the proportions. Sampling is seeded, so a stage's records are the same on
every run with the same seed.

The functions take the data section (:class:`~embedpipe.data.config.DataConfig`); what a training stage adds to it
(its ``data_weights`` and ``task_types``, any object with those two fields: :class:`StageMix`) is passed by the
caller.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Literal, Protocol

from embedpipe.data.config import DataConfig
from embedpipe.data.schema import Record, kind_of

log = logging.getLogger(__name__)

Stage = Literal["stage1", "stage2"]
STAGES: tuple[Stage, ...] = ("stage1", "stage2")


class StageMix(Protocol):
    """What a training stage adds to the data section's mix (``training.<stage>`` has both fields)."""

    data_weights: dict[str, float] | None
    task_types: list[str] | None


def stage_weights(data: DataConfig, stage: Stage, weights_override: dict[str, float] | None = None) -> dict[str, float]:
    """Source name -> weight for ``stage`` (stage1 = pretraining weights, stage2 = fine-tuning weights), with the
    stage's (or a stage-2 variant's) ``weights_override``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}")
    attr = "weight_stage1" if stage == "stage1" else "weight_stage2"
    weights = {s.name: float(getattr(s, attr)) for s in data.sources}
    for name, value in (weights_override or {}).items():
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


def select_stage_records(records: list[Record], data: DataConfig, stage: Stage,
                         weights_override: dict[str, float] | None = None, seed: int | None = None,
                         task_types: list[str] | None = None) -> list[Record]:
    """The records of one stage's mix, shuffled; ``weights_override`` and ``task_types`` are the stage's (a stage-2
    variant's) ``data_weights`` and ``task_types``; filtered to ``task_types`` when any are named."""
    weights = stage_weights(data, stage, weights_override)
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
    total = data.stage1_records if stage == "stage1" else data.stage2_records
    counts = allocate({k: len(v) for k, v in by_source.items()}, weights, total)
    rng = random.Random(f"{data.seed if seed is None else seed}:{stage}")
    out: list[Record] = []
    for name in sorted(by_source):
        out += _take(by_source[name], counts[name], rng)
    rng.shuffle(out)
    return out


def stage_manifests(records: list[Record], data: DataConfig, stages: Mapping[str, StageMix] | None) -> dict:
    """Each stage's mix counts (:func:`mix_manifest`), with the stage's own weights and task types when given."""
    stages = stages or {}
    return {stage: mix_manifest(select_stage_records(records, data, stage,
                                                     weights_override=getattr(stages.get(stage), "data_weights", None),
                                                     task_types=getattr(stages.get(stage), "task_types", None)))
            for stage in STAGES}


def mix_manifest(records: list[Record]) -> dict:
    """Counts per source, task type and language (and generator and SDG task for synthetic records)."""
    return {
        "records": len(records),
        "by_source": dict(Counter(r.source for r in records)),
        "by_task_type": dict(Counter(r.task_type for r in records)),
        "by_language": dict(Counter(r.language for r in records)),
        "by_generator": dict(Counter(r.generator for r in records if r.generator)),
        "by_kind": dict(Counter(kind_of(r) for r in records)),
    }
