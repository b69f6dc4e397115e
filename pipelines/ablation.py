"""The ablation pipeline: one data build, then the grid of ``pipeline.ablation`` (loss x SDG generator mix x merge
set x seed) as the distinct steps its cells need (embedpipe.orchestration.ablation.plan_grid): SDG + mining per
distinct SDG/mining input, stage 1 per distinct stage-1 input, each stage-1 model's stage-2 variants once (each scored
on the dev tasks), a merge (and its dev score) per cell whose merge set has more than one variant; all recorded as
MLflow child runs under one parent."""


from kfp import dsl

from embedpipe.components.data.component import build_data
from embedpipe.components.download.component import download_models
from embedpipe.components.evaluate.component import evaluate
from embedpipe.components.merge.component import merge_cells
from embedpipe.components.mining.component import mine
from embedpipe.components.plan.component import ablation_report, plan_ablation
from embedpipe.components.sdg.component import synthesize
from embedpipe.components.track.component import track_ablation, track_open
from embedpipe.components.train.component import train_stage1, train_stage2
from embedpipe.orchestration.cluster import ClusterSettings, on_cpu, on_gpus, with_mlflow, with_models
from embedpipe.pipelines.full import RUN_ID, closing_step

def _unit(unit: dict) -> str:
    """What the step components take as ``overrides_json``: the unit's name (its checkpoint folder) and overrides."""
    import json

    return json.dumps({"name": unit["name"], "overrides": unit["overrides"]}, sort_keys=True)


def build_ablation_pipeline(settings: ClusterSettings = ClusterSettings()):
    """The pipeline for the grid's plan in ``settings`` (:func:`embedpipe.orchestration.ablation.plan_grid` of the
    recipe it is compiled for; without one, the default recipe's single cell); the run checks that the recipe it is
    given has that plan."""
    import json

    from embedpipe.orchestration.ablation import training_lanes

    plan = settings.plan
    if plan is None:
        from embedpipe.orchestration.ablation import plan_grid
        from embedpipe.recipe import Recipe

        plan = plan_grid(Recipe.model_validate({"name": "default", "model": {"base": "base-model"}}))
    lanes, stage2_parallelism = training_lanes(plan)

    def pipeline_steps(recipe_json, run_name):
        tracking = with_mlflow(on_cpu(track_open(recipe_json=recipe_json, pipeline="ablation", kfp_run_id=RUN_ID,
                                                 run_name=run_name, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER),
                                      settings, "1", "1Gi"), settings)
        tracking.set_caching_options(False).set_display_name("MLflow parent run")
        checked = on_cpu(plan_ablation(recipe_json=recipe_json, compiled_digest=plan["digest"]), settings, "1", "1Gi")
        checked.after(tracking).set_display_name("grid plan")
        fetched = with_models(on_cpu(download_models(recipe_json=recipe_json), settings, "4", "16Gi"), settings,
                              download=True).after(checked).set_display_name("hub download")
        data = with_models(on_cpu(build_data(recipe_json=recipe_json), settings, "4", "32Gi"), settings) \
            .after(fetched).set_display_name("data build")
        records = {}
        for unit in plan["mining"]:
            # a unit may change the generator mix, so its one SDG task (generator by generator, each engine closed
            # before the next starts) gets the largest tensor-parallel degree of the recipe's generators
            sdg = on_gpus(synthesize(recipe_json=recipe_json, data=data.outputs["data"], overrides_json=_unit(unit)),
                          settings, settings.sdg_max_tp).after(fetched).set_display_name(f"SDG {unit['key']}")
            mined = on_gpus(mine(recipe_json=recipe_json, data=data.outputs["data"],
                                 synthetic=sdg.outputs["synthetic"], overrides_json=_unit(unit)), settings, 1)
            records[unit["key"]] = mined.set_display_name(f"mining {unit['key']}").outputs["records"]

        # training in `lanes` chains: a chain's next stage-1 training waits for the previous unit's stage-2 group
        lane_tail: list = [None] * lanes
        report = None  # the groups' reports, one JSON list, gathered one group at a time
        for index, unit in enumerate(plan["stage1"]):
            lane = index % lanes
            stage1 = on_gpus(train_stage1(recipe_json=recipe_json, records=records[unit["mining"]],
                                          overrides_json=_unit(unit), run_id=RUN_ID),
                             settings, settings.gpus_per_node, "16", "200Gi").set_display_name(f"stage 1 {unit['key']}")
            with_mlflow(stage1, settings)  # the job logs into its own child run while it trains
            if lane_tail[lane] is not None:
                stage1.after(lane_tail[lane])
            tail = stage1
            for group in (g for g in plan["stage2"] if g["stage1"] == unit["key"]):
                items = [json.dumps(v, sort_keys=True) for v in group["variants"]]
                with dsl.ParallelFor(items, name=f"stage2-{group['key']}", parallelism=stage2_parallelism) as variant:
                    stage2 = on_gpus(train_stage2(recipe_json=recipe_json, records=records[unit["mining"]],
                                                  init_model=stage1.outputs["model"], variant_json=variant,
                                                  overrides_json=_unit(group), run_id=RUN_ID),
                                     settings, settings.gpus_per_node, "16", "200Gi").set_display_name("stage 2")
                    with_mlflow(stage2, settings)
                    dev = on_gpus(evaluate(recipe_json=recipe_json, model=stage2.outputs["model"],
                                           data=data.outputs["data"], overrides_json=_unit(group), role="dev",
                                           run_id=RUN_ID, job_stage="stage2", job_cell=group["name"],
                                           job_variant_json=variant),
                                  settings, 1).set_display_name("dev evaluation")
                    with_mlflow(dev, settings)  # the scores go to the stage-2 job's child run
                cells = [c for c in plan["cells"] if c["group"] == group["key"] and c["merged"]]
                merged = None
                if cells:
                    merged = on_gpus(merge_cells(recipe_json=recipe_json, cells_json=json.dumps(cells, sort_keys=True),
                                                 models=dsl.Collected(stage2.outputs["model"]),
                                                 data=data.outputs["data"]), settings, 1, "8", "64Gi")
                    merged.set_display_name(f"merge + dev evaluation {group['key']}")
                report = on_cpu(ablation_report(
                    previous=report.output if report is not None else "[]",
                    group_json=json.dumps({"key": group["key"], "name": group["name"]}),
                    stage1_summary=stage1.outputs["Output"],
                    stage2_summaries=dsl.Collected(stage2.outputs["Output"]),
                    dev_summaries=dsl.Collected(dev.outputs["Output"]),
                    merged_json=merged.outputs["Output"] if merged is not None else "[]"), settings, "1", "1Gi")
                report.set_display_name(f"report {group['key']}")
                tail = merged if merged is not None else report
            lane_tail[lane] = tail

        tracked = track_ablation(recipe_json=recipe_json, run_name=run_name, plan_json=json.dumps(plan),
                                 reports_json=report.output, parent_run_id=tracking.output)
        with_mlflow(on_cpu(tracked, settings, "1", "4Gi"), settings)
        tracked.set_caching_options(False).set_display_name("MLflow parent + child runs")
        return tracked

    @dsl.pipeline(name="embedpipe-ablation", description=__doc__.splitlines()[0])
    def ablation(recipe_json: str, run_name: str = "ablation"):
        with dsl.ExitHandler(closing_step(settings, recipe_json), name="pipeline-steps"):
            pipeline_steps(recipe_json, run_name)

    return ablation

