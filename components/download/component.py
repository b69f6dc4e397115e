"""The one hub download of a run: base model, teachers, generators and evaluation data into the model cache."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def download_models(recipe_json: str) -> str:
    from embedpipe.orchestration import steps

    return steps.download_models(steps.recipe_from_json(recipe_json)).to_json()
