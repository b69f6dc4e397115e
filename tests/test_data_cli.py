"""``embedpipe data`` commands end to end through typer."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from embedpipe.cli import app
from embedpipe.recipe import recipes_dir

runner = CliRunner()


def test_build_validate_and_mix(tmp_path):
    out = tmp_path / "data"
    result = runner.invoke(app, ["data", "build", str(recipes_dir() / "local.yaml"), str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["eval_tasks"] == ["PydocRetrieval"]
    result = runner.invoke(app, ["data", "validate", str(out / "records.jsonl")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["records"] == report["rows"] > 0 and report["dropped_total"] == 0
    result = runner.invoke(app, ["data", "mix", str(recipes_dir() / "local.yaml"), str(out / "records.jsonl"),
                                 "--stage", "stage2", "--set", "data.stage2_records=50", "-o", str(tmp_path / "s2.jsonl")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["records"] == 50
    assert len((tmp_path / "s2.jsonl").read_text().splitlines()) == 50


def test_validate_reports_the_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "query": "q", "positives": ["p"]}\n{"id": "b", "query": "q", "positives": ["p"], '
                   '"task_type": "astrology"}\n')
    result = runner.invoke(app, ["data", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2: field 'task_type'" in result.output
    result = runner.invoke(app, ["data", "validate", str(bad), "--lenient"])
    assert result.exit_code == 1 and json.loads(result.output[result.output.index("{\n"):])["dropped"] == {"bad_task_type": 1}


def test_bad_recipe_override_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["data", "build", str(recipes_dir() / "local.yaml"), str(tmp_path),
                                 "--set", "data.sources.0.weight_stage1=-1"])
    assert result.exit_code == 2 and "weight_stage1" in result.output
