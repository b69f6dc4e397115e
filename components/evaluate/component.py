"""MTEB evaluation of a model on the recipe's tasks and the held-out tasks of the data step (embedpipe.evaluation)."""

from typing import List

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("eval"), install_kfp_package=False)
def evaluate(recipe_json: str, model: dsl.Input[dsl.Model], data: dsl.Input[dsl.Dataset],
             results: dsl.Output[dsl.Artifact], scores: dsl.Output[dsl.Metrics], model_name: str = "",
             overrides_json: str = "", role: str = "test", run_id: str = "", job_stage: str = "", job_cell: str = "",
             job_variant_json: str = "", to_parent: bool = False) -> str:
    """``role="dev"``: the dev tasks (model selection), ``"test"``: the test tasks (the final model). ``run_id`` (the
    KFP run) and ``job_*`` (the training job that made the model: stage, ablation unit, variant): the scores also
    go to that job's MLflow child run, now; ``to_parent``: to the pipeline's parent run (the merged model)."""
    import json
    import os

    from embedpipe import tracking
    from embedpipe.evaluation.run import role_metrics
    from embedpipe.orchestration import steps
    from embedpipe.tracking import numeric_metrics

    recipe = steps.recipe_from_json(recipe_json, overrides_json)
    summary = steps.evaluate(recipe, model.path, data.path, results.path, model_name=model_name or None, role=role)
    if job_stage or to_parent:
        job = tracking.job_key(job_stage, json.loads(job_variant_json) if job_variant_json else None,
                               job_cell or None) if job_stage else ""
        tracking.log_job_metrics(recipe, run_id, job, role_metrics(summary.model_dump()))
    os.makedirs(results.path, exist_ok=True)
    with open(os.path.join(results.path, "scores.json"), "w") as handle:
        handle.write(summary.model_dump_json(indent=2, fallback=str))
    headline = numeric_metrics({f"{role}_{k}": summary.get(k) for k in ("mean_task", "mean_task_type", "borda")})
    for key, value in headline.items():
        scores.log_metric(key, value)  # shown by the KFP UI
    os.makedirs(os.path.dirname(scores.path), exist_ok=True)
    with open(scores.path, "w") as handle:  # a file at the URI: KFP's local cache treats a missing one as a miss
        json.dump(headline, handle)
    return summary.to_json()


@dsl.component(base_image=image("eval"), install_kfp_package=False)
def base_encoder(recipe_json: str, model: dsl.Output[dsl.Model]) -> str:
    """The recipe's untrained base model as an encoder export (what stage 1 starts from), to be evaluated beside
    the trained ones."""
    from embedpipe.orchestration import steps

    return steps.base_encoder(steps.recipe_from_json(recipe_json), model.path).to_json()


@dsl.component(base_image=image("eval"), install_kfp_package=False)
def evaluate_group(recipe_json: str, model: dsl.Input[dsl.Model], data: dsl.Input[dsl.Dataset], group: int,
                   groups: int, results: dsl.Output[dsl.Artifact], model_name: str = "") -> str:
    """One task group of a fanned-out evaluation (every ``groups``-th task by name, from ``group``)."""
    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json)
    return steps.evaluate(recipe, model.path, data.path, results.path, model_name=model_name or None,
                          group=(group, groups)).to_json()


@dsl.component(base_image=image("eval"), install_kfp_package=False)
def merge_evaluations(recipe_json: str, groups: dsl.Input[List[dsl.Artifact]], results: dsl.Output[dsl.Artifact],
                      scores: dsl.Output[dsl.Metrics]) -> str:
    """The task groups' results as one mteb results folder and one summary (what one pod writes)."""
    import json
    import os

    from embedpipe.evaluation.run import merge_results
    from embedpipe.orchestration import steps
    from embedpipe.tracking import numeric_metrics

    recipe = steps.recipe_from_json(recipe_json)
    summary = merge_results([g.path for g in groups], results.path, recipe.evaluation)
    with open(os.path.join(results.path, "scores.json"), "w") as handle:
        json.dump(summary, handle, indent=2, default=str)
    headline = numeric_metrics({k: summary.get(k) for k in ("mean_task", "mean_task_type", "borda")})
    for key, value in headline.items():
        scores.log_metric(key, value)
    os.makedirs(os.path.dirname(scores.path), exist_ok=True)
    with open(scores.path, "w") as handle:
        json.dump(headline, handle)
    return json.dumps(summary, default=str)
