"""Ablation grids: every loss variant x SDG generator mix x merge set is one cell, trained and evaluated on the
same data build, and logged as an MLflow child run under one parent."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

from embedpipe.orchestration import steps
from embedpipe.orchestration.config import AblationCell
from embedpipe.recipe import Recipe, RecipeError


def _generator_override(recipe: Recipe, shares: dict[str, float]) -> list[dict]:
    """The recipe's generators with a mix's shares (names and shares are checked when the recipe loads)."""
    return [{**g.model_dump(mode="json"), "share": shares[g.name]} for g in recipe.sdg.generators
            if shares.get(g.name, 0) > 0]


def grid_cells(recipe: Recipe) -> list[dict]:
    """The cells of ``pipeline.ablation`` (:class:`AblationCell` as dicts, the form KFP's loop passes on).

    The axes are checked when the recipe loads (typed losses, known variants and generators); each cell's recipe is
    validated here once more as a whole, so a combination that cannot run fails before any training.
    """
    grid = recipe.pipeline.ablation
    variant_names = [v.name for v in recipe.training.variants()]
    losses = grid.losses or [recipe.training.loss]
    mixes = [(m.name, _generator_override(recipe, m.shares)) for m in grid.generator_mixes] or [("recipe", None)]
    merge_sets = grid.merge_sets or [variant_names]
    cells = []
    for loss, (mix_name, generators), merge_set in itertools.product(losses, mixes, merge_sets):
        overrides: dict = {"training.loss": loss}
        if generators is not None:
            overrides["sdg.generators"] = generators
        name = f"loss={loss},sdg={mix_name},merge={'+'.join(merge_set)}"
        cells.append(AblationCell(name=name, overrides=overrides, merge_set=list(merge_set),
                                  axes={"loss": loss, "sdg_mix": mix_name, "merge_set": "+".join(merge_set)}))
    recipe_json = recipe.model_dump_json()
    for cell in cells:  # every cell's recipe validates (a mix without the second-step generator fails here)
        try:
            steps.recipe_from_json(recipe_json, json.dumps(cell.overrides))
        except RecipeError as err:
            raise RecipeError(f"pipeline.ablation cell {cell.name!r}: {err}") from None
    return [cell.model_dump(mode="json") for cell in cells]


def train_and_merge(cell: dict, recipe_json: str, records_dir: str, init_model: str, out_dir: str,
                    run_id: str = "") -> dict:
    """Train the cell's merge set of stage-2 variants from its stage-1 model, in turn, and merge them (each variant
    checkpoints under the run's artifact prefix, so a retried cell resumes)."""
    recipe = steps.recipe_from_json(recipe_json, json.dumps(cell["overrides"]))
    variants = {v["name"]: v for v in steps.stage2_variants(recipe)}
    work = Path(tempfile.mkdtemp(prefix="embedpipe-cell-", dir=os.environ.get("EMBEDPIPE_WORK_DIR")))
    try:
        summaries, dirs = [], []
        for name in cell["merge_set"]:
            target = work / name
            summaries.append({"variant": variants[name],
                              **steps.train(recipe, "stage2", records_dir, init_model, target, variant=variants[name],
                                            checkpoint_dir=steps.checkpoint_folder(recipe, run_id, cell["name"],
                                                                                   "stage2", name),
                                            kfp_run_id=run_id, cell=cell["name"]).model_dump()})
            dirs.append(str(target))
        merged = steps.merge(recipe, dirs, out_dir).model_dump() if len(dirs) > 1 else _copy_single(dirs[0], out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"cell": cell, "stage2": summaries, "merge": merged}


def _copy_single(src: str, out_dir: str) -> dict:
    shutil.copytree(src, out_dir, dirs_exist_ok=True)
    return {"merged": 1, "note": "a merge set of one variant is that variant"}
