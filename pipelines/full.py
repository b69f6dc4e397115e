"""The full pipeline: data build -> SDG -> mining -> stage 1 -> N stage-2 runs (ParallelFor) -> merge (Collected) ->
MTEB evaluation -> MLflow (runs, model registry) + KServe manifest. The same definition runs locally (kfp.local,
embedpipe run) and on Kubeflow (embedpipe compile / submit)."""


from kfp import dsl

from embedpipe.components.data.component import build_data
from embedpipe.components.evaluate.component import evaluate
from embedpipe.components.merge.component import merge
from embedpipe.components.mining.component import mine
from embedpipe.components.plan.component import plan_variants
from embedpipe.components.sdg.component import synthesize
from embedpipe.components.track.component import track_full
from embedpipe.components.train.component import train_stage1, train_stage2
from embedpipe.components.train_job.component import train_stage1_job, train_stage2_job
from embedpipe.orchestration.cluster import ClusterSettings, on_cpu, on_gpus, with_mlflow

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # the run's id: its training checkpoints live under it


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

    @dsl.pipeline(name="embedpipe-full", description=__doc__.splitlines()[0])
    def full(recipe_json: str, run_name: str = "") -> str:
        data = on_cpu(build_data(recipe_json=recipe_json), settings, "4", "32Gi").set_display_name("data build")
        sdg = on_gpus(synthesize(recipe_json=recipe_json, data=data.outputs["data"]), settings, 1).set_display_name("SDG")
        mined = on_gpus(mine(recipe_json=recipe_json, data=data.outputs["data"], synthetic=sdg.outputs["synthetic"]),
                        settings, 1).set_display_name("hard-negative mining")
        stage1 = train1(recipe_json, mined.outputs["records"]).set_display_name("stage 1")
        plan = on_cpu(plan_variants(recipe_json=recipe_json), settings, "1", "1Gi").set_display_name("stage-2 runs")
        with dsl.ParallelFor(plan.output, name="stage2-runs", parallelism=settings.stage2_parallelism) as variant:
            stage2 = train2(recipe_json, mined.outputs["records"], stage1.outputs["model"], variant)
            stage2.set_display_name("stage 2")
        merged = on_cpu(merge(recipe_json=recipe_json, models=dsl.Collected(stage2.outputs["model"]),
                               data=data.outputs["data"]),
                        settings, "8", "64Gi").set_display_name("merge")
        scores = on_gpus(evaluate(recipe_json=recipe_json, model=merged.outputs["merged"], data=data.outputs["data"]),
                         settings, 1).set_display_name("MTEB evaluation")
        tracked = track_full(recipe_json=recipe_json, run_name=run_name, data=data.outputs["data"],
                             records=mined.outputs["records"], stage1_summary=stage1.outputs["Output"],
                             stage2_summaries=dsl.Collected(stage2.outputs["Output"]), merged=merged.outputs["merged"],
                             merge_summary=merged.outputs["Output"], results=scores.outputs["results"])
        with_mlflow(on_cpu(tracked, settings, "2", "16Gi"), settings)
        tracked.set_caching_options(False).set_display_name("MLflow + KServe manifest")
        return tracked.outputs["Output"]

    return full
