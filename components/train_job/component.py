"""Multi-node training: a launcher step that runs the stage as a Kubeflow Trainer v2 TrainJob (or a v1 PyTorchJob,
training.launcher) with the kubernetes client, waits for it with the recipe's timeout, fails when the job fails, and returns the export as its artifact
(embedpipe.orchestration.k8s_jobs). The launcher itself needs no GPU."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("base"), install_kfp_package=False)
def train_stage1_job(recipe_json: str, records: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model],
                     run_id: str = "") -> str:
    import json

    from embedpipe import tracking
    from embedpipe.orchestration import k8s_jobs, steps

    recipe = steps.recipe_from_json(recipe_json)
    if recipe.model.random_init:
        raise ValueError("model.random_init is for local smoke runs; multi-node training needs a real base model")
    name = k8s_jobs.job_name(recipe.name, run_id, "stage1")  # a retried launcher finds its job again
    with tracking.training_run(recipe, run_id, "stage1"):  # the job's rank 0 logs into this child run
        return json.dumps(k8s_jobs.run_distributed_stage(recipe, "stage1", records.path, recipe.model.base,
                                                         model.path, None, name), default=str)


@dsl.component(base_image=image("base"), install_kfp_package=False)
def train_stage2_job(recipe_json: str, records: dsl.Input[dsl.Dataset], init_model: dsl.Input[dsl.Model],
                     variant_json: str, model: dsl.Output[dsl.Model], run_id: str = "") -> str:
    import json

    from embedpipe import tracking
    from embedpipe.orchestration import k8s_jobs, steps

    recipe = steps.recipe_from_json(recipe_json)
    variant = json.loads(variant_json)
    name = k8s_jobs.job_name(recipe.name, run_id, "stage2", steps.variant_name(variant))
    with tracking.training_run(recipe, run_id, "stage2", variant):  # the job's rank 0 logs into this child run
        summary = k8s_jobs.run_distributed_stage(recipe, "stage2", records.path, init_model.path, model.path, variant,
                                                 name)
    return json.dumps({"variant": variant, **summary}, default=str)
