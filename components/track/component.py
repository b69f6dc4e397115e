"""The last step: publish the merged model, record the pipeline run in MLflow (parent + child runs), register the
model and render its KServe manifest (embedpipe.orchestration.publish). Not cached."""

from typing import List

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def track_full(recipe_json: str, run_name: str, data: dsl.Input[dsl.Dataset], records: dsl.Input[dsl.Dataset],
               stage1_summary: str, stage2_summaries: list, merged: dsl.Input[dsl.Model], merge_summary: str,
               results: dsl.Input[dsl.Artifact], manifest: dsl.Output[dsl.Artifact]) -> str:
    import json

    from embedpipe.orchestration import publish, steps

    recipe = steps.recipe_from_json(recipe_json)
    return json.dumps(publish.record_full_run(
        recipe, run_name, data.path, records.path, json.loads(stage1_summary),
        [json.loads(s) for s in stage2_summaries], merged.path, json.loads(merge_summary), results.path,
        manifest.path,
    ), default=str)


@dsl.component(base_image=image("base"), install_kfp_package=False)
def track_ablation(recipe_json: str, run_name: str, plan_json: str, reports_json: str) -> str:
    import json

    from embedpipe.orchestration import publish, steps

    recipe = steps.recipe_from_json(recipe_json)
    return json.dumps(publish.record_ablation(recipe, run_name, json.loads(plan_json),
                                              json.loads(reports_json)), default=str)
