"""Recipes load into typed objects; unknown keys and bad values are errors naming file and key."""

from __future__ import annotations

import json

import pytest

from embedpipe.recipe import RecipeError, load_recipe, recipes_dir


def test_shipped_recipes_load():
    local = load_recipe(recipes_dir() / "local.yaml")
    assert local.model.base == "smollm2-135m-instruct"
    paper = load_recipe(recipes_dir() / "llama-embed-nemotron-8b.yaml")
    s1, s2 = paper.training.stage1, paper.training.stage2
    assert (s1.learning_rate, s1.batch_size, s1.steps, s1.hard_negatives) == (1e-5, 2048, 5773, 1)
    assert (s2.learning_rate, s2.batch_size, s2.steps, s2.hard_negatives) == (2e-6, 128, 33668, 4)
    assert s1.warmup_steps == s2.warmup_steps == 100 and s1.schedule == "linear" and s1.weight_decay == 0.01
    assert paper.training.temperature == 0.02 and s1.max_query_length == s2.max_document_length == 512
    assert paper.mining.margin_type == "perc" and paper.mining.margin == 0.95
    assert {t.model for t in paper.mining.teachers} == {"intfloat/e5-mistral-7b-instruct", "Qwen/Qwen3-Embedding-8B"}
    assert len(paper.sdg.generators) == 6 and len(paper.training.stage2_variants) == 6
    assert paper.merge.method == "uniform" and paper.evaluation.benchmark == "MTEB(Multilingual, v2)"
    assert paper.model.base == "meta-llama/Llama-3.1-8B"


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((recipes_dir() / "local.yaml").read_text().replace("  temperature: 0.02", "  temprature: 0.02"))
    with pytest.raises(RecipeError, match=r"bad.yaml: training.temprature: Extra inputs are not permitted"):
        load_recipe(bad)


def test_bad_value_names_key(tmp_path):
    with pytest.raises(RecipeError, match=r"training.stage1.learning_rate: .*greater than 0"):
        load_recipe(recipes_dir() / "local.yaml", ["training.stage1.learning_rate=-1"])
    with pytest.raises(RecipeError, match="unknown task type"):
        load_recipe(recipes_dir() / "local.yaml", {"data.sources": [{"name": "x", "kind": "jsonl", "task_type": "nope"}]})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(broken)


def test_overrides_and_flat_params():
    recipe = load_recipe(recipes_dir() / "local.yaml", ["training.stage1.steps=3", "seed=7"])
    assert recipe.training.stage1.steps == 3 and recipe.seed == 7
    params = recipe.flat_params()
    assert params["training.stage1.steps"] == "3" and params["model.base"] == "smollm2-135m-instruct"


LOCAL = recipes_dir() / "local.yaml"


@pytest.mark.parametrize("variant, field", [
    ({"name": "mix-c", "learnig_rate": 1e-5}, r"training.stage2_variants\[2\] \(mix-c\).learnig_rate: Extra inputs"),
    ({"name": "mix-c", "batch_size": 0}, r"training.stage2_variants\[2\] \(mix-c\).batch_size: .*greater than 0"),
    ({"name": "mix-a"}, r"training.stage2_variants: .*\['mix-a'\] appear more than once"),
])
def test_stage2_variants_are_typed_at_load(variant, field):
    variants = [{"name": "mix-a"}, {"name": "mix-b", "learning_rate": 2e-5}, variant]
    with pytest.raises(RecipeError, match=field):
        load_recipe(LOCAL, {"training.stage2_variants": variants})


def test_variant_resolves_over_stage2():
    recipe = load_recipe(LOCAL)
    mix_b = recipe.training.variants()[1]
    resolved = mix_b.resolve(recipe.training.stage2)
    assert resolved.name == "stage2-mix-b" and resolved.learning_rate == 2e-5
    assert resolved.batch_size == recipe.training.stage2.batch_size
    assert mix_b.overrides() == {"name": "mix-b", "learning_rate": 2e-5}


def test_ablation_cells_are_checked_at_load():
    with pytest.raises(RecipeError, match=r"pipeline.ablation.losses\[0\]: Input should be 'hard_negative_infonce'"):
        load_recipe(LOCAL, {"pipeline.ablation.losses": ["infonse"]})
    with pytest.raises(RecipeError, match=r"merge_sets\[0\]: \['mix-a', 'mix-z'\] names no or unknown .*\['mix-z'\]"):
        load_recipe(LOCAL, {"pipeline.ablation.merge_sets": [["mix-a", "mix-z"]]})
    with pytest.raises(RecipeError, match=r"generator_mixes \(m\): unknown generators \['nope'\]"):
        load_recipe(LOCAL, {"pipeline.ablation.generator_mixes": [{"name": "m", "shares": {"nope": 1.0}}]})
    with pytest.raises(RecipeError, match=r"generator_mixes\[0\] \(m\): generator mix 'm': give at least one"):
        load_recipe(LOCAL, {"pipeline.ablation.generator_mixes": [{"name": "m", "shares": {"smollm2-135m": 0}}]})


def test_cross_field_rules_live_in_the_models():
    with pytest.raises(RecipeError, match=r"sdg: sdg.second_step_generator 'other' is not one of: smollm2-135m"):
        load_recipe(LOCAL, {"sdg.second_step_generator": "other"})
    with pytest.raises(RecipeError, match=r"merge.weights: 3 weights for the 2 stage-2 variants merged"):
        load_recipe(LOCAL, {"merge.method": "weighted", "merge.weights": [1, 1, 1]})
    with pytest.raises(RecipeError, match="weighted needs merge.weights"):
        load_recipe(LOCAL, {"merge.method": "weighted"})
    assert load_recipe(LOCAL, {"merge.method": "weighted", "merge.weights": [1, 3]}).merge.weights == [1, 3]


def test_one_seed_at_the_root():
    recipe = load_recipe(LOCAL, ["seed=7"])
    assert recipe.data.seed == recipe.sdg.seed == recipe.mining.seed == recipe.training.seed == 7
    with pytest.raises(RecipeError, match=r"mining.seed: set the recipe's root `seed` instead"):
        load_recipe(LOCAL, ["mining.seed=3"])


def test_one_name_per_stage():
    recipe = load_recipe(LOCAL)
    assert (recipe.training.stage1.name, recipe.training.stage2.name) == ("stage1", "stage2")
    assert {"weight_stage1", "weight_stage2"} <= set(recipe.data.sources[0].model_dump())
    with pytest.raises(RecipeError, match=r"data.sources\[0\] \(pydoc\).weight_pretrain: Extra inputs"):
        load_recipe(LOCAL, ["data.sources.0.weight_pretrain=1"])
    with pytest.raises(RecipeError, match="model.max_query_length: Extra inputs"):
        load_recipe(LOCAL, ["model.max_query_length=64"])


def test_a_section_from_overrides_alone_parses_like_a_recipe():
    from embedpipe.mining.config import MiningConfig
    from embedpipe.recipe import section_from_overrides

    config = section_from_overrides("mining", MiningConfig, ["mining.top_k=8", "mining.teachers=[{model: x}]"])
    assert config.top_k == 8 and config.teachers[0].model == "x"
    with pytest.raises(RecipeError, match=r"mining.top_k: Input should be greater than 0"):
        section_from_overrides("mining", MiningConfig, ["mining.top_k=0"])
    with pytest.raises(RecipeError, match=r"overrides look like mining.key=value, got 'training.loss'"):
        section_from_overrides("mining", MiningConfig, ["training.loss=gecko"])


def test_a_stage_may_train_with_its_own_loss():
    recipe = load_recipe(LOCAL)  # the embedded default: in-batch negatives in stage 1, the paper's loss after
    training = recipe.training
    assert training.stage_loss(training.stage1) == "in_batch"
    assert training.stage_loss(training.variants()[0].resolve(training.stage2)) == training.loss == "hard_negative_infonce"
    with pytest.raises(RecipeError, match=r"stage2_variants\[0\] \(mix-a\).loss: Input should be"):
        load_recipe(LOCAL, {"training.stage2_variants": [{"name": "mix-a", "loss": "infonse"}]})
    # a loss axis is the loss of every stage: stage 1's own gives way in each cell; a variant's own is refused
    from embedpipe.orchestration import steps
    from embedpipe.orchestration.ablation import grid_cells

    grid = load_recipe(LOCAL, {"pipeline.ablation.losses": ["gecko"]})
    cell = steps.recipe_from_json(grid.model_dump_json(), json.dumps(grid_cells(grid)[0]["overrides"]))
    assert {cell.training.stage_loss(cell.training.stage1), cell.training.stage_loss(cell.training.stage2)} == {"gecko"}
    with pytest.raises(RecipeError, match=r"ablation.losses sets the loss of every stage, but .*\(mix-b\).loss"):
        load_recipe(LOCAL, {"pipeline.ablation.losses": ["gecko"], "training.stage2_variants": [
            {"name": "mix-a"}, {"name": "mix-b", "loss": "in_batch"}]})
