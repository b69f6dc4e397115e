"""The ablation pipeline: one data build, then a grid over loss variant x SDG generator mix x merge set
(``pipeline.ablation``), each cell SDG -> mining -> stage 1 -> its merge set of stage-2 runs merged -> evaluation,
all recorded as MLflow child runs under one parent."""


from kfp import dsl

from embedpipe.components.data.component import build_data
from embedpipe.components.download.component import download_models
from embedpipe.components.evaluate.component import evaluate
from embedpipe.components.mining.component import mine
from embedpipe.components.plan.component import plan_ablation
from embedpipe.components.sdg.component import synthesize
from embedpipe.components.track.component import track_ablation, track_open
from embedpipe.components.train.component import train_merge_set, train_stage1
from embedpipe.orchestration.cluster import ClusterSettings, on_cpu, on_gpus, with_mlflow, with_models


def build_ablation_pipeline(settings: ClusterSettings = ClusterSettings()):
    @dsl.pipeline(name="embedpipe-ablation", description=__doc__.splitlines()[0])
    def ablation(recipe_json: str, run_name: str = "ablation") -> str:
        tracking = with_mlflow(on_cpu(track_open(recipe_json=recipe_json, pipeline="ablation",
                                                 kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, run_name=run_name,
                                                 kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER),
                                      settings, "1", "1Gi"), settings)
        tracking.set_caching_options(False).set_display_name("MLflow parent run")
        fetched = with_models(on_cpu(download_models(recipe_json=recipe_json), settings, "4", "16Gi"), settings,
                              download=True).after(tracking).set_display_name("hub download")
        data = with_models(on_cpu(build_data(recipe_json=recipe_json), settings, "4", "32Gi"), settings) \
            .after(fetched).set_display_name("data build")
        plan = on_cpu(plan_ablation(recipe_json=recipe_json), settings, "1", "1Gi").after(tracking) \
            .set_display_name("grid")
        with dsl.ParallelFor(plan.output, name="grid-cells") as cell:
            # a cell may change the generator mix, so its one SDG task (generator by generator, each engine closed
            # before the next starts) gets the largest tensor-parallel degree of the recipe's generators
            sdg = on_gpus(synthesize(recipe_json=recipe_json, data=data.outputs["data"], overrides_json=cell),
                          settings, settings.sdg_max_tp).after(fetched).set_display_name("SDG")
            mined = on_gpus(mine(recipe_json=recipe_json, data=data.outputs["data"],
                                 synthetic=sdg.outputs["synthetic"], overrides_json=cell), settings, 1)
            stage1 = on_gpus(train_stage1(recipe_json=recipe_json, records=mined.outputs["records"],
                                          overrides_json=cell,
                                          run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), settings, settings.gpus_per_node, "16", "200Gi")
            with_mlflow(stage1, settings)
            merged = on_gpus(train_merge_set(recipe_json=recipe_json, records=mined.outputs["records"],
                                             init_model=stage1.outputs["model"], cell_json=cell,
                                             run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
                             settings, settings.gpus_per_node, "16", "200Gi").set_display_name("stage 2 + merge")
            with_mlflow(merged, settings)
            scores = on_gpus(evaluate(recipe_json=recipe_json, model=merged.outputs["merged"],
                                      data=data.outputs["data"], overrides_json=cell), settings, 1)
        tracked = track_ablation(recipe_json=recipe_json, run_name=run_name,
                                 cell_summaries=dsl.Collected(merged.outputs["Output"]),
                                 results=dsl.Collected(scores.outputs["results"]), parent_run_id=tracking.output)
        with_mlflow(on_cpu(tracked, settings, "1", "4Gi"), settings)
        tracked.set_caching_options(False).set_display_name("MLflow parent + child runs")
        return tracked.outputs["Output"]

    return ablation
