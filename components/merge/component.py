"""Checkpoint merging of the stage-2 runs (embedpipe.merging.merge)."""

from typing import List

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def merge(recipe_json: str, models: dsl.Input[List[dsl.Model]], data: dsl.Input[dsl.Dataset],
          merged: dsl.Output[dsl.Model]) -> str:
    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json)
    return steps.merge(recipe, [m.path for m in models], merged.path, data.path).to_json()


@dsl.component(base_image=image("eval"), install_kfp_package=False)
def merge_cells(recipe_json: str, cells_json: str, models: dsl.Input[List[dsl.Model]], data: dsl.Input[dsl.Dataset],
                merged: dsl.Output[dsl.Model]) -> str:
    """A stage-2 group's merged ablation cells: each merge set picked by variant name from the group's models, merged
    by the recipe's method (greedy soup on the dev tasks) into ``merged/<cell key>`` and scored on the dev tasks."""
    import json

    from embedpipe.orchestration import ablation

    pairs = [(m.metadata.get("variant", ""), m.path) for m in models]
    return json.dumps(ablation.merge_cells(json.loads(cells_json), recipe_json, pairs, data.path, merged.path),
                      default=str)
