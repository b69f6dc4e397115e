"""Recipes load into typed objects; unknown keys and bad values are errors naming file and key."""

from __future__ import annotations

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
