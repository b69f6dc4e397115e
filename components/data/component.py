"""Data build: public sets -> records, corpus, manifest and held-out eval tasks (embedpipe.data.build)."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def build_data(recipe_json: str, data: dsl.Output[dsl.Dataset]) -> str:
    from embedpipe.orchestration import steps

    return steps.build_data(steps.recipe_from_json(recipe_json), data.path).to_json()
