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
