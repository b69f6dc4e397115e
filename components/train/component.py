"""Training in the step's own pod (one node): stage 1 from the base model, stage 2 from stage 1.
embedpipe.training.run.train_stage."""

from kfp import dsl

from embedpipe.orchestration.images import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def train_stage1(recipe_json: str, records: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model],
                 overrides_json: str = "", run_id: str = "") -> str:
    import json
    import tempfile

    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json, overrides_json)
    init = steps.base_model_source(recipe, tempfile.mkdtemp(prefix="embedpipe-base-"))
    cell = json.loads(overrides_json) if overrides_json else {}  # an ablation cell: its own checkpoint folder
    parts = [cell["name"], "stage1"] if isinstance(cell, dict) and cell.get("name") else ["stage1"]
    return steps.train(recipe, "stage1", records.path, init, model.path,
                       checkpoint_dir=steps.checkpoint_folder(recipe, run_id, *parts), kfp_run_id=run_id,
                       cell=parts[0] if len(parts) > 1 else None).to_json()


@dsl.component(base_image=image("train"), install_kfp_package=False)
def train_stage2(recipe_json: str, records: dsl.Input[dsl.Dataset], init_model: dsl.Input[dsl.Model],
                 variant_json: str, model: dsl.Output[dsl.Model], overrides_json: str = "", run_id: str = "") -> str:
    import json

    from embedpipe.orchestration import steps

    recipe = steps.recipe_from_json(recipe_json, overrides_json)
    variant = json.loads(variant_json)
    unit = json.loads(overrides_json) if overrides_json else {}  # an ablation unit: its own checkpoints and child run
    cell = unit["name"] if isinstance(unit, dict) and unit.get("name") else None
    summary = steps.train(recipe, "stage2", records.path, init_model.path, model.path, variant=variant,
                          checkpoint_dir=steps.checkpoint_folder(recipe, run_id, *([cell] if cell else []), "stage2",
                                                                 steps.variant_name(variant)),
                          kfp_run_id=run_id, cell=cell)
    summary.variant = variant
    model.metadata["variant"] = steps.variant_name(variant)  # a merge picks its set from the Collected models by it
    return summary.to_json()
