"""Plan steps: expand the recipe into the loop items of the pipelines (stage-2 variants, ablation cells)."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def plan_variants(recipe_json: str) -> list:
    """The recipe's stage-2 runs, one JSON string per ParallelFor iteration."""
    import json

    from embedpipe.orchestration import steps

    return [json.dumps(v, sort_keys=True) for v in steps.stage2_variants(steps.recipe_from_json(recipe_json))]


@dsl.component(base_image=image("base"), install_kfp_package=False)
def plan_ablation(recipe_json: str) -> list:
    """The ablation grid (pipeline.ablation): one JSON cell per loss x generator mix x merge set."""
    import json

    from embedpipe.orchestration import ablation, steps

    return [json.dumps(c, sort_keys=True) for c in ablation.grid_cells(steps.recipe_from_json(recipe_json))]
