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
def plan_ablation(recipe_json: str, compiled_digest: str) -> str:
    """The ablation grid's plan for the recipe the run was given, checked against the one the pipeline was compiled
    for (its tasks were unrolled for that grid): a different grid fails here, before any step runs."""
    import json

    from embedpipe.orchestration import ablation, steps

    return json.dumps(ablation.check_plan(steps.recipe_from_json(recipe_json), compiled_digest))


@dsl.component(base_image=image("base"), install_kfp_package=False)
def ablation_report(previous: str, group_json: str, stage1_summary: str, stage2_summaries: list, dev_summaries: list,
                    merged_json: str = "[]") -> str:
    """The grid's reports so far (a JSON list) with one more stage-2 group: its stage-1 summary, each variant's
    training and dev summaries (gathered from its ParallelFor) and its merged cells. Built one group at a time, the
    tracking step's one input (kfp.local cannot pass a list of JSON-string task outputs as one list input)."""
    import json

    from embedpipe.orchestration import ablation

    report = ablation.group_report(json.loads(group_json), json.loads(stage1_summary),
                                   [json.loads(s) for s in stage2_summaries], [json.loads(s) for s in dev_summaries],
                                   json.loads(merged_json))
    return json.dumps(json.loads(previous) + [report], default=str)
