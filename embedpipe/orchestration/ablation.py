"""Ablation grids: every loss variant x SDG generator mix x merge set x seed is one cell, and the plan of the steps
the cells need.

Cells share every step whose effective inputs they share. A step's identity is the hash of the recipe sections it
reads, after the cell's overrides:

- SDG + mining (one unit): ``data``, ``sdg``, ``mining``
- stage 1: the unit's inputs plus ``model`` and ``training`` without the stage-2 settings
- stage-2 group (the variants trained from one stage-1 model): stage 1's inputs plus the stage-2 settings; its
  variants are the union of the merge sets of its cells, each trained once and scored on the dev tasks
- a cell: its group and merge set; a merge set of one variant is that variant (its dev score too), a larger one is
  merged (the recipe's ``merge`` method; greedy soup on the dev tasks) and the merged model scored on the dev tasks

So a loss-only axis shares SDG and mining, a merge-set-only axis shares stage 1 and the stage-2 trainings, and a
seed axis (the root seed) shares nothing but the data build. Cells are scored on the dev tasks only: the test tasks
stay for the final model (the full pipeline).

The plan is made when the pipeline is compiled (KFP sets the tasks' inputs and resources per task, so the units are
unrolled then) and checked again at run time against the recipe the run was given (:func:`check_plan`).
``pipeline.ablation.parallelism`` bounds how many training steps run at once (:func:`training_lanes`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

from embedpipe.orchestration import steps
from embedpipe.orchestration.config import AblationCell
from embedpipe.recipe import Recipe, RecipeError

MINING_SECTIONS = ("data", "sdg", "mining")
STAGE2_KEYS = ("stage2", "stage2_variants")


def _generator_override(recipe: Recipe, shares: dict[str, float]) -> list[dict]:
    """The recipe's generators with a mix's shares (names and shares are checked when the recipe loads)."""
    return [{**g.model_dump(mode="json"), "share": shares[g.name]} for g in recipe.sdg.generators
            if shares.get(g.name, 0) > 0]


def _seed_overrides(recipe: Recipe, seed: int) -> dict:
    """The root seed and every area's (an area's seed must equal the root's: embedpipe.recipe.derive_seed)."""
    from embedpipe.recipe import SEEDED_SECTIONS, derive_seed

    return {"seed": seed, **{f"{area}.seed": derive_seed(seed, area) for area in SEEDED_SECTIONS}}


def grid_cells(recipe: Recipe) -> list[dict]:
    """The cells of ``pipeline.ablation`` (:class:`AblationCell` as dicts).

    The axes are checked when the recipe loads (typed losses, known variants and generators); each cell's recipe is
    validated here once more as a whole, so a combination that cannot run fails before any training.
    """
    grid = recipe.pipeline.ablation
    variant_names = [v.name for v in recipe.training.variants()]
    losses = grid.losses or [recipe.training.loss]
    mixes = [(m.name, _generator_override(recipe, m.shares)) for m in grid.generator_mixes] or [("recipe", None)]
    merge_sets = grid.merge_sets or [variant_names]
    seeds = grid.seeds or [None]
    cells = []
    for loss, (mix_name, generators), merge_set, seed in itertools.product(losses, mixes, merge_sets, seeds):
        overrides: dict = {"training.loss": loss}
        if grid.losses:  # the axis is the loss of every stage: a stage's own loss (local.yaml's stage 1) gives way
            overrides.update({"training.stage1.loss": None, "training.stage2.loss": None})
        if generators is not None:
            overrides["sdg.generators"] = generators
        axes = {"loss": loss, "sdg_mix": mix_name, "merge_set": "+".join(merge_set)}
        name = f"loss={loss},sdg={mix_name},merge={'+'.join(merge_set)}"
        if seed is not None:
            overrides.update(_seed_overrides(recipe, seed))
            axes["seed"] = str(seed)
            name += f",seed={seed}"
        cells.append(AblationCell(name=name, overrides=overrides, merge_set=list(merge_set), axes=axes))
    recipe_json = recipe.model_dump_json()
    for cell in cells:  # every cell's recipe validates (a mix without the second-step generator fails here)
        try:
            steps.recipe_from_json(recipe_json, json.dumps(cell.overrides))
        except RecipeError as err:
            raise RecipeError(f"pipeline.ablation cell {cell.name!r}: {err}") from None
    return [cell.model_dump(mode="json") for cell in cells]


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def plan_grid(recipe: Recipe) -> dict:
    """The distinct steps of the grid and which cell uses which (JSON-able; see the module docstring).

    ``{"mining": [unit], "stage1": [unit], "stage2": [group], "cells": [cell], "parallelism": n, "digest": str}``
    where a unit is ``{"key", "name", "overrides"}`` (``name``/``overrides``: the form the step components take), a
    stage-1 unit names its ``mining`` key, a group its ``stage1`` key and ``variants`` (dicts for ``train_stage2``,
    in the recipe's order), and a cell its ``group`` and whether it is ``merged``.
    """
    recipe_json = recipe.model_dump_json()
    mining: dict[str, dict] = {}
    stage1: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    cells = []
    for cell in grid_cells(recipe):
        tree = steps.recipe_from_json(recipe_json, json.dumps(cell["overrides"])).model_dump(mode="json")
        training = {k: v for k, v in tree["training"].items() if k not in STAGE2_KEYS}
        mining_key = _digest(*(tree[s] for s in MINING_SECTIONS))
        stage1_key = _digest(mining_key, tree["model"], training)
        group_key = _digest(stage1_key, tree["training"])
        mining.setdefault(mining_key, {"key": mining_key, "name": f"mining-{mining_key}",
                                       "overrides": cell["overrides"]})
        stage1.setdefault(stage1_key, {"key": stage1_key, "name": f"stage1-{stage1_key}", "mining": mining_key,
                                       "overrides": cell["overrides"]})
        group = groups.setdefault(group_key, {"key": group_key, "name": f"stage2-{group_key}", "stage1": stage1_key,
                                              "overrides": cell["overrides"], "variant_names": set(), "cells": []})
        group["variant_names"] |= set(cell["merge_set"])
        group["cells"].append(cell["name"])
        cells.append({**cell, "group": group_key, "merged": len(cell["merge_set"]) > 1,
                      "key": _digest(group_key, sorted(cell["merge_set"]), tree["merge"], tree["evaluation"])})
    for group in groups.values():
        variants = steps.stage2_variants(steps.recipe_from_json(recipe_json, json.dumps(group["overrides"])))
        wanted = group.pop("variant_names")
        group["variants"] = [v for v in variants if v["name"] in wanted]
    plan = {"mining": list(mining.values()), "stage1": list(stage1.values()), "stage2": list(groups.values()),
            "cells": cells, "parallelism": recipe.pipeline.ablation.parallelism}
    plan["digest"] = _digest(plan)
    return plan


def check_plan(recipe: Recipe, compiled_digest: str) -> dict:
    """The grid's plan at run time; a recipe whose grid differs from the one the pipeline was compiled for fails
    here, naming both (the compiled pipeline's tasks were unrolled for that grid)."""
    plan = plan_grid(recipe)
    if compiled_digest and plan["digest"] != compiled_digest:
        raise RecipeError(f"recipe {recipe.name!r}: its ablation plan ({plan['digest']}: {len(plan['cells'])} cells, "
                          f"{len(plan['stage1'])} stage-1 and {sum(len(g['variants']) for g in plan['stage2'])} "
                          f"stage-2 trainings) is not the one this pipeline was compiled for ({compiled_digest}); "
                          "compile the pipeline for this recipe (`embedpipe compile`)")
    return {"digest": plan["digest"], "cells": len(plan["cells"]), "mining_units": len(plan["mining"]),
            "stage1_trainings": len(plan["stage1"]),
            "stage2_trainings": sum(len(g["variants"]) for g in plan["stage2"]),
            "merges": sum(1 for c in plan["cells"] if c["merged"])}


def training_lanes(plan: dict) -> tuple[int, int]:
    """(lanes, stage-2 parallelism) so that at most ``plan["parallelism"]`` training steps run at once: stage-1
    units run in ``lanes`` chains, each followed in its chain by its stage-2 groups, whose variants run
    ``stage-2 parallelism`` at a time; ``lanes * stage-2 parallelism <= parallelism``."""
    bound = max(1, int(plan["parallelism"]))
    lanes = max(1, min(bound, len(plan["stage1"])))
    return lanes, max(1, bound // lanes)


def merge_cells(cells: list[dict], recipe_json: str, models: list[tuple[str, str]], data_dir: str,
                out_dir: str) -> list[dict]:
    """A stage-2 group's merged cells: each cell's merge set of the group's models (``(variant name, folder)``
    pairs) merged by the recipe's method (greedy soup scores on the dev tasks) into ``out_dir/<cell key>``, and the
    merged model scored on the dev tasks. Returns ``[{"cell", "merge", "dev"}]``."""
    by_name = dict(models)
    out = []
    for cell in cells:
        recipe = steps.recipe_from_json(recipe_json, json.dumps(cell["overrides"]))
        missing = [n for n in cell["merge_set"] if n not in by_name]
        if missing:
            raise ValueError(f"ablation cell {cell['name']!r}: no stage-2 model of variant(s) {missing} among "
                             f"{sorted(by_name)}")
        target = Path(out_dir) / cell["key"]
        merged = steps.merge(recipe, [by_name[n] for n in cell["merge_set"]], target, data_dir)
        dev = steps.evaluate(recipe, target, data_dir, Path(out_dir) / f"{cell['key']}-dev", role="dev")
        out.append({"cell": cell["name"], "merge": merged.model_dump(), "dev": dev.model_dump()})
    return out


def group_report(group: dict, stage1_summary: dict, stage2_summaries: list[dict], dev_summaries: list[dict],
                 merged: list[dict]) -> dict:
    """One stage-2 group's results for the tracking step: stage 1, each variant's training and dev scores, and its
    merged cells (:func:`merge_cells`)."""
    if len(stage2_summaries) != len(dev_summaries):
        raise ValueError(f"stage-2 group {group['name']}: {len(stage2_summaries)} trainings but "
                         f"{len(dev_summaries)} dev evaluations")
    return {"group": group["key"], "stage1": stage1_summary,
            "variants": [{"training": t, "dev": d} for t, d in zip(stage2_summaries, dev_summaries)],
            "merged": merged}


def cell_results(plan: dict, reports: list[dict]) -> list[dict]:
    """Each cell with its dev scores: a merge set of one variant takes that variant's, a merged cell its merged
    model's; with the stage-2 trainings (and their dev scores) behind it."""
    by_group = {r["group"]: r for r in reports}
    out = []
    for cell in plan["cells"]:
        report = by_group[cell["group"]]
        variants = {(v["training"].get("variant") or {}).get("name"): v for v in report["variants"]}
        behind = [variants[n] for n in cell["merge_set"]]
        if cell["merged"]:
            merged = next(m for m in report["merged"] if m["cell"] == cell["name"])
            dev, merge = merged["dev"], merged["merge"]
        else:
            dev, merge = behind[0]["dev"], None
        out.append({"cell": cell, "dev": dev, "merge": merge, "stage1": report["stage1"], "variants": behind})
    return out
