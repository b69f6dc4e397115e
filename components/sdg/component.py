"""Synthetic data generation over the data step's corpus (embedpipe.data.sdg): one task per generator of the mix
(``synthesize_generator``, with the GPUs its tensor-parallel degree needs), then ``synthesize`` filters the union of
their shards (or, alone, generates and filters in one process)."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("sdg"), install_kfp_package=False)
def synthesize(recipe_json: str, data: dsl.Input[dsl.Dataset], synthetic: dsl.Output[dsl.Dataset],
               overrides_json: str = "", generate: bool = True) -> str:
    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json, overrides_json)
    return steps.synthesize(recipe, data.path, synthetic.path, generate=generate).to_json()


@dsl.component(base_image=image("sdg"), install_kfp_package=False)
def synthesize_generator(recipe_json: str, data: dsl.Input[dsl.Dataset], generator: str,
                         shards: dsl.Output[dsl.Dataset], overrides_json: str = "") -> str:
    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json, overrides_json)
    return steps.synthesize(recipe, data.path, shards.path, only_generator=generator).to_json()
