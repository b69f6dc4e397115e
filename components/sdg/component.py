"""Synthetic data generation over the data step's corpus (embedpipe.data.sdg)."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("sdg"), install_kfp_package=False)
def synthesize(recipe_json: str, data: dsl.Input[dsl.Dataset], synthetic: dsl.Output[dsl.Dataset],
               overrides_json: str = "") -> str:
    import json

    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json, overrides_json)
    return json.dumps(steps.synthesize(recipe, data.path, synthetic.path), default=str)
