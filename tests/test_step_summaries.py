"""The typed step summaries: required fields checked with the step and field named, the area's other figures kept,
the wire format (JSON) unchanged, and each step's key figure."""

from __future__ import annotations

import json
import math

import pytest

from embedpipe.orchestration import summaries
from embedpipe.orchestration.steps import timed


def test_a_summary_missing_a_field_names_the_step_and_field():
    @timed(summaries.TrainSummary)
    def train():
        return {"stage": "stage1", "final_loss": 0.5}  # no "steps"

    with pytest.raises(summaries.SummaryError, match=r"step train summary: steps: Field required"):
        train()


def test_the_areas_figures_ride_along_and_the_json_keeps_its_keys():
    @timed(summaries.TrainSummary)
    def train():
        return {"stage": "stage2", "steps": 4, "final_loss": math.nan, "world_size": 2, "history": [{"loss": 1.0}]}

    summary = train()
    assert summary.step_seconds is not None and summary.step_seconds >= 0
    assert summary["world_size"] == 2 and summary.get("missing", "x") == "x"
    wire = json.loads(summary.to_json())  # NaN stays NaN, as json.dumps wrote it
    assert math.isnan(wire["final_loss"]) and wire["world_size"] == 2 and wire["history"] == [{"loss": 1.0}]
    with pytest.raises(KeyError):
        summary["nope"]


def test_a_task_output_reads_back_as_its_components_summary():
    mined = json.dumps({"combine": {"records": 10}, "mining": {"records_in": 10, "records_out": 9,
                                                               "negatives_per_record": {"4": 8, "2": 1}}})
    summary = summaries.read_output("comp-mine", mined)
    assert isinstance(summary, summaries.MineSummary)
    assert summary.mining.negatives == 34
    assert summary.figure() == "9 records, 34 negatives"
    assert summaries.read_output("plan-variants", json.dumps([{"name": "a"}])) is None  # no summary model
    # KFP names a component's second and third use in a pipeline comp-evaluate-2, comp-evaluate-3
    assert isinstance(summaries.read_output("comp-evaluate-3", json.dumps({"mean_task": 0.5})), summaries.EvalSummary)
    with pytest.raises(summaries.SummaryError, match="evaluate summary: mean_task"):
        summaries.read_output("evaluate", json.dumps({"mean_task": "high"}))


@pytest.mark.parametrize("component, data, figure", [
    ("build-data", {"records": 48, "corpus_documents": 120}, "48 records, 120 documents"),
    ("synthesize", {"skipped": "sdg disabled", "records": 0}, "skipped (sdg disabled)"),
    ("train-stage2", {"stage": "stage2", "steps": 2, "final_loss": 1.23456, "variant": {"name": "mix-a"}},
     "mix-a: loss 1.235 (2 steps)"),
    ("merge", {"method": "uniform", "inputs": [{}, {}]}, "uniform, 2 checkpoints"),
    ("evaluate", {"mean_task": 0.03132, "scores": {"a": 0.1, "b": 0.2}}, "Mean(Task) 0.0313 on 2 tasks"),
    ("download-models", {"planned": 3, "offline": True}, "3 hub entries (offline cache)"),
])
def test_key_figures(component, data, figure):
    assert summaries.read_output(component, json.dumps(data)).figure() == figure
