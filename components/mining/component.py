"""Hard-negative mining of public + synthetic records against the corpus (embedpipe.mining)."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def mine(recipe_json: str, data: dsl.Input[dsl.Dataset], synthetic: dsl.Input[dsl.Dataset],
         records: dsl.Output[dsl.Dataset], overrides_json: str = "") -> str:
    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json, overrides_json)
    return steps.mine(recipe, data.path, synthetic.path, records.path).to_json()


@dsl.component(base_image=image("train"), install_kfp_package=False)
def embed_corpus(recipe_json: str, data: dsl.Input[dsl.Dataset], shard: int, shards: int,
                 overrides_json: str = "") -> str:
    """One fan-out task of the corpus embedding (every ``shards``-th chunk from ``shard``) into the shared cache."""
    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json, overrides_json)
    return steps.embed_corpus(recipe, data.path, shard, shards).to_json()
