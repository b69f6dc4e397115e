"""MLflow around a pipeline run: the first step opens the parent run (named after the recipe and run, found by the
later steps through the KFP run id); the last step publishes the merged model, records scores and artifacts, registers
the model, renders its KServe manifest and ends the parent (embedpipe.orchestration.publish); the exit handler ends a
parent the last step never reached FAILED. Not cached."""

from typing import List

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def track_open(recipe_json: str, pipeline: str, kfp_run_id: str, run_name: str = "", kfp_run_name: str = "") -> str:
    """The parent run's id (a retried step gets the run it opened before)."""
    from embedpipe.orchestration import publish, steps

    return publish.open_run(steps.recipe_from_json(recipe_json), pipeline, kfp_run_id, run_name=run_name,
                            kfp_run_name=kfp_run_name)


@dsl.component(base_image=image("base"), install_kfp_package=False)
def track_close(recipe_json: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """The pipeline's exit handler (runs whether its steps succeeded or not): a run that failed before its last step
    leaves the parent RUNNING; this ends it FAILED with KFP's error (and children a killed step left RUNNING)."""
    import json

    from embedpipe.orchestration import publish, steps

    return json.dumps(publish.close_run(steps.recipe_from_json(recipe_json), kfp_run_id, status.state,
                                        status.error_message), default=str)


@dsl.component(base_image=image("base"), install_kfp_package=False)
def track_full(recipe_json: str, run_name: str, data: dsl.Input[dsl.Dataset], records: dsl.Input[dsl.Dataset],
               stage1_summary: str, stage2_summaries: list, merged: dsl.Input[dsl.Model], merge_summary: str,
               results: dsl.Input[dsl.Artifact], manifest: dsl.Output[dsl.Artifact], parent_run_id: str = "",
               base_scores: str = "", stage1_scores: str = "", dev_scores: str = "") -> str:
    """``*_scores``: the evaluation summaries of the untrained base and the stage-1 model (test tasks) and of the
    merged model on the dev tasks, logged to the parent beside the merged model's."""
    import json

    from embedpipe.orchestration import publish, steps

    recipe = steps.recipe_from_json(recipe_json)
    evaluations = {k: json.loads(v) for k, v in (("base", base_scores), ("stage1", stage1_scores),
                                                  ("dev", dev_scores)) if v}
    return json.dumps(publish.record_full_run(
        recipe, run_name, data.path, records.path, json.loads(stage1_summary),
        [json.loads(s) for s in stage2_summaries], merged.path, json.loads(merge_summary), results.path,
        manifest.path, parent_run_id=parent_run_id, evaluations=evaluations,
    ), default=str)


@dsl.component(base_image=image("base"), install_kfp_package=False)
def track_ablation(recipe_json: str, run_name: str, plan_json: str, reports_json: str, parent_run_id: str = "") -> str:
    import json

    from embedpipe.orchestration import publish, steps

    recipe = steps.recipe_from_json(recipe_json)
    return json.dumps(publish.record_ablation(recipe, run_name, json.loads(plan_json), json.loads(reports_json),
                                              parent_run_id=parent_run_id), default=str)
