"""The full pipeline: data build -> SDG -> mining -> stage 1 -> N stage-2 runs (ParallelFor) -> merge (Collected) ->
MTEB evaluation -> MLflow (runs, model registry) + KServe manifest. The same definition runs locally (kfp.local,
embedpipe run) and on Kubeflow (embedpipe compile / submit).

The untrained base and the stage-1 model are evaluated on the same tasks as the merged model, so a run shows what
each stage added (``embedpipe run`` prints the three side by side)."""


from kfp import dsl

from embedpipe.components.data.component import build_data
from embedpipe.components.download.component import download_models
from embedpipe.components.evaluate.component import base_encoder, evaluate, evaluate_group, merge_evaluations
from embedpipe.components.merge.component import merge
from embedpipe.components.mining.component import embed_corpus, mine
from embedpipe.components.plan.component import plan_variants
from embedpipe.components.sdg.component import synthesize, synthesize_generator
from embedpipe.components.track.component import track_close, track_full, track_open
from embedpipe.components.train.component import train_stage1, train_stage2
from embedpipe.components.train_job.component import train_stage1_job, train_stage2_job
from embedpipe.orchestration.cluster import ClusterSettings, on_cpu, on_gpus, with_mlflow, with_models


def sdg_steps(settings: ClusterSettings, recipe_json, data, after):
    """One task per generator of the recipe's mix, each with its tensor-parallel GPUs (KFP sets resources per
    task, not per ParallelFor iteration, so the mix is unrolled at compile time), then the filter step (dedupe +
    consistency teacher on one GPU) over their shards; a recipe without generators keeps the one SDG step."""
    if not settings.sdg_generators:
        return on_gpus(synthesize(recipe_json=recipe_json, data=data), settings, 1).after(after).set_display_name("SDG")
    generated = []
    for name, tp in settings.sdg_generators:
        task = on_gpus(synthesize_generator(recipe_json=recipe_json, data=data, generator=name), settings, tp,
                       str(8 * tp), f"{64 * tp}Gi").after(after).set_display_name(f"SDG {name} (TP {tp})")
        generated.append(task)
    return on_gpus(synthesize(recipe_json=recipe_json, data=data, generate=False), settings, 1) \
        .after(*generated).set_display_name("SDG filter")

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # the run's id: its training checkpoints live under it


def closing_step(settings: ClusterSettings, recipe_json):
    """The exit handler of a pipeline's steps: it runs however they ended and ends the MLflow parent FAILED if the
    tracking step never ran (a failed step, a cancelled run), so no parent is left RUNNING."""
    closing = with_mlflow(on_cpu(track_close(recipe_json=recipe_json, kfp_run_id=RUN_ID), settings, "1", "1Gi"),
                          settings)
    return closing.set_caching_options(False).set_display_name("MLflow parent closed")

# the display name of the step whose summary holds each model's scores (what `embedpipe run` reads for its table)
MODELS = {"base": "base", "stage1": "stage 1", "merged": "merged"}
EVALUATED = {key: f"MTEB evaluation ({name})" for key, name in MODELS.items()}


def evaluation_steps(settings: ClusterSettings, recipe_json, model, data, which: str):
    """MTEB evaluation of ``model`` on the recipe's tasks and the data step's held-out tasks: one pod, or (with
    ``evaluation.groups`` above 1) one pod per task group, then one results folder. Returns the task whose
    ``results`` and summary hold the scores, named ``EVALUATED[which]``."""
    if settings.eval_groups > 1:  # the tasks fan out over pods; one results folder after
        n = settings.eval_groups
        with dsl.ParallelFor(list(range(n)), name=f"evaluation-groups-{which}", parallelism=n) as group:
            part = on_gpus(evaluate_group(recipe_json=recipe_json, model=model, data=data, group=group, groups=n),
                           settings, 1)
            part.set_display_name(f"MTEB task group ({MODELS[which]})")
        return on_cpu(merge_evaluations(recipe_json=recipe_json, groups=dsl.Collected(part.outputs["results"])),
                      settings, "2", "8Gi").set_display_name(EVALUATED[which])
    return on_gpus(evaluate(recipe_json=recipe_json, model=model, data=data), settings, 1) \
        .set_display_name(EVALUATED[which])


def build_full_pipeline(settings: ClusterSettings = ClusterSettings()):
    """The pipeline for a node pool; with ``settings.multi_node`` the training steps launch PyTorchJobs."""

    def train1(recipe_json, records):
        if settings.multi_node:
            return on_cpu(train_stage1_job(recipe_json=recipe_json, records=records, run_id=RUN_ID), settings, "1", "4Gi")
        return on_gpus(train_stage1(recipe_json=recipe_json, records=records, run_id=RUN_ID), settings,
                       settings.gpus_per_node, "16", "200Gi")

    def train2(recipe_json, records, init, variant):
        if settings.multi_node:
            return on_cpu(train_stage2_job(recipe_json=recipe_json, records=records, init_model=init,
                                           variant_json=variant, run_id=RUN_ID), settings, "1", "4Gi")
        return on_gpus(train_stage2(recipe_json=recipe_json, records=records, init_model=init, variant_json=variant,
                                    run_id=RUN_ID),
                       settings, settings.gpus_per_node, "16", "200Gi")

    def pipeline_steps(recipe_json, run_name):
        tracking = with_mlflow(on_cpu(track_open(recipe_json=recipe_json, pipeline="full", kfp_run_id=RUN_ID,
                                                 run_name=run_name, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER),
                                      settings, "1", "1Gi"), settings)
        tracking.set_caching_options(False).set_display_name("MLflow parent run")
        fetched = with_models(on_cpu(download_models(recipe_json=recipe_json), settings, "4", "16Gi"), settings,
                              download=True).after(tracking).set_display_name("hub download")
        data = with_models(on_cpu(build_data(recipe_json=recipe_json), settings, "4", "32Gi"), settings) \
            .after(fetched).set_display_name("data build")
        sdg = sdg_steps(settings, recipe_json, data.outputs["data"], fetched)
        mined = on_gpus(mine(recipe_json=recipe_json, data=data.outputs["data"], synthetic=sdg.outputs["synthetic"]),
                        settings, 1).set_display_name("hard-negative mining")
        if settings.mining_embed_tasks > 1:  # the corpus embedding fans out; mining then reuses every chunk
            n = settings.mining_embed_tasks
            with dsl.ParallelFor(list(range(n)), name="corpus-embedding", parallelism=n) as shard:
                embedded = on_gpus(embed_corpus(recipe_json=recipe_json, data=data.outputs["data"], shard=shard,
                                                shards=n), settings, 1).set_display_name("corpus embedding")
            mined.after(embedded)
        stage1 = with_mlflow(train1(recipe_json, mined.outputs["records"]), settings).set_display_name("stage 1")
        plan = on_cpu(plan_variants(recipe_json=recipe_json), settings, "1", "1Gi").after(tracking) \
            .set_display_name("stage-2 runs")
        with dsl.ParallelFor(plan.output, name="stage2-runs", parallelism=settings.stage2_parallelism) as variant:
            stage2 = with_mlflow(train2(recipe_json, mined.outputs["records"], stage1.outputs["model"], variant),
                                 settings)
            stage2.set_display_name("stage 2")
            if settings.dev_tasks:  # each variant's dev scores, into its own child run (model selection, never test)
                dev = on_gpus(evaluate(recipe_json=recipe_json, model=stage2.outputs["model"], data=data.outputs["data"],
                                       role="dev", run_id=RUN_ID, job_stage="stage2", job_variant_json=variant),
                              settings, 1)
                with_mlflow(dev, settings).set_display_name("dev evaluation")
        merged = with_models(on_cpu(merge(recipe_json=recipe_json, models=dsl.Collected(stage2.outputs["model"]),
                               data=data.outputs["data"]),
                        settings, "8", "64Gi"), settings).set_display_name("merge")
        scores = evaluation_steps(settings, recipe_json, merged.outputs["merged"], data.outputs["data"], "merged")
        # the same tasks on the untrained base and the stage-1 model: what each stage added
        base = with_models(on_cpu(base_encoder(recipe_json=recipe_json), settings, "4", "32Gi"), settings) \
            .after(fetched).set_display_name("base encoder")
        base_scores = evaluation_steps(settings, recipe_json, base.outputs["model"], data.outputs["data"], "base")
        stage1_scores = evaluation_steps(settings, recipe_json, stage1.outputs["model"], data.outputs["data"], "stage1")
        merged_dev = None
        if settings.dev_tasks:  # the merged model on the dev tasks too (beside the variants': merged vs best single)
            merged_dev = on_gpus(evaluate(recipe_json=recipe_json, model=merged.outputs["merged"],
                                          data=data.outputs["data"], role="dev", run_id=RUN_ID, to_parent=True),
                                 settings, 1)
            with_mlflow(merged_dev, settings).set_display_name("merged: dev evaluation")
        tracked = track_full(recipe_json=recipe_json, run_name=run_name, data=data.outputs["data"],
                             records=mined.outputs["records"], stage1_summary=stage1.outputs["Output"],
                             stage2_summaries=dsl.Collected(stage2.outputs["Output"]), merged=merged.outputs["merged"],
                             merge_summary=merged.outputs["Output"], results=scores.outputs["results"],
                             parent_run_id=tracking.output, base_scores=base_scores.outputs["Output"],
                             stage1_scores=stage1_scores.outputs["Output"],
                             dev_scores=merged_dev.outputs["Output"] if merged_dev is not None else "")
        with_mlflow(on_cpu(tracked, settings, "2", "16Gi"), settings)
        tracked.set_caching_options(False).set_display_name("MLflow + KServe manifest")
        return tracked

    @dsl.pipeline(name="embedpipe-full", description=__doc__.splitlines()[0])
    def full(recipe_json: str, run_name: str = ""):
        with dsl.ExitHandler(closing_step(settings, recipe_json), name="pipeline-steps"):
            pipeline_steps(recipe_json, run_name)

    return full
