"""The one hub download of a run: base model, teachers, generators and evaluation data into the model cache."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def download_models(recipe_json: str) -> str:
    import json

    from embedpipe.orchestration import steps

    return json.dumps(steps.download_models(steps.recipe_from_json(recipe_json)), default=str)
