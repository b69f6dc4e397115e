"""The data -> SDG -> mining -> training record flow: every SDG task's records (classification's two steps included)
reach a stage-2 batch, with the negatives their source gave them first, counted per kind at every step."""

from __future__ import annotations

import json
from collections import Counter

import yaml

from embedpipe.data.schema import SDG_TASKS, kind_of, read_records
from embedpipe.orchestration import steps
from embedpipe.recipe import load_recipe
from scripted_llm import llm_server  # noqa: F401 - the fixture

DOCS = {
    "d0": "The while statement repeats a block of code as long as its condition stays true.",
    "d1": "A dictionary maps hashable keys to arbitrary values and supports fast lookup by key.",
    "d2": "The import statement finds a module, loads and initialises it, and binds a name to it.",
    "d3": "Exceptions are raised with the raise statement and handled with try and except clauses.",
    "d4": "A generator function uses yield to produce a sequence of values lazily, one at a time.",
    "d5": "Slicing a list with start, stop and step returns a new list with the selected items.",
    "d6": "Classes bundle data and behaviour; instances are created by calling the class object.",
    "d7": "The with statement wraps a block in the methods defined by a context manager object.",
}
QUERIES = {"q0": "how do I loop while a condition holds", "q1": "how are values looked up by key",
           "q2": "how does python load a module", "q3": "how do I catch an error"}


def _beir(folder):
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                                 for k, v in DOCS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    (folder / "qrels").mkdir()
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                               "".join(f"q{i}\td{i}\t1\n" for i in range(4)))


def test_every_sdg_task_reaches_a_stage2_batch(tmp_path, monkeypatch, llm_server, tiny_encoder):  # noqa: F811
    from transformers import AutoTokenizer

    from embedpipe.data import schema
    from embedpipe.training import run as training_run

    from embedpipe.training.data import build_examples, device_micro_batches, step_indices
    from embedpipe.training.run import load_stage_records, resolve_stage

    _beir(tmp_path / "docs")
    url = f"http://127.0.0.1:{llm_server.server_address[1]}/v1"
    tree = {
        "name": "flow", "model": {"base": "smollm2-135m-instruct"},
        "data": {"sources": [{"name": "docs", "kind": "beir", "path": str(tmp_path / "docs"),
                              "instruction": "Find the doc", "weight_stage1": 1.0, "weight_stage2": 1.0},
                             {"name": "synthetic", "kind": "synthetic", "weight_stage1": 1.0, "weight_stage2": 1.0}]},
        "sdg": {"tasks": list(SDG_TASKS), "languages": ["en", "fr"], "records_per_task": 6, "shard_size": 3,
                "consistency_top_k": None,
                "generators": [{"name": "llm", "backend": "openai", "model": "m", "base_url": url, "max_retries": 0}]},
        "mining": {"teachers": [{"model": "all-minilm-l6-v2", "max_length": 48}], "top_k": 2, "candidates": 40,
                   "chunk_size": 16},
        "training": {"stage1": {"task_types": ["retrieval"], "hard_negatives": 1, "batch_size": 4, "steps": 1},
                     "stage2": {"hard_negatives": 2, "batch_size": 4, "steps": 1, "short_records": "drop"}},
    }
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(tree))
    recipe = load_recipe(path)

    data, sdg, mined = tmp_path / "data", tmp_path / "sdg", tmp_path / "mined"
    steps.build_data(recipe, data)
    sdg_summary = steps.synthesize(recipe, data, sdg)
    made = Counter(kind_of(r) for r in read_records(sdg / "synthetic.jsonl"))
    assert set(made) == {f"sdg:{t}" for t in SDG_TASKS}, sdg_summary
    assert sdg_summary["by_kind"] == dict(made) and sdg_summary["other_label_negatives"] > 0

    # a record is validated once, where it is made (data build, SDG): mining and the training step read it back
    # checking each row's shape only, never field by field again
    validated: list[str] = []
    field_by_field = schema.validate_row
    monkeypatch.setattr(schema, "validate_row", lambda row, path, line: validated.append(path) or
                        field_by_field(row, path, line))
    summary = steps.mine(recipe, data, sdg, mined)
    loaded: dict = {}
    monkeypatch.setattr(training_run, "train_records", lambda training, stage, cfg, records, *a, **k:
                        loaded.setdefault("records", records) and {"stage": stage, "steps": 0})
    steps.train(recipe, "stage2", mined, str(tiny_encoder), tmp_path / "unused", variant={"name": "v"})
    assert loaded["records"] and validated == [], validated
    monkeypatch.setattr(schema, "validate_row", field_by_field)
    assert not (mined / "combined.jsonl").exists()  # streamed, not written and read back
    by_kind = summary["by_kind"]
    for task in SDG_TASKS:  # no SDG record is lost at mining: the LLM's positives are in the mining corpus
        assert by_kind[f"sdg:{task}"] == {"in": made[f"sdg:{task}"], "out": made[f"sdg:{task}"]}, by_kind
    assert summary.mining.skipped_missing_positive == 0 and summary["combine"]["sdg_documents"] > 0

    records = {r.id: r for r in read_records(mined / "records.jsonl")}
    synthetic = {r.id: r for r in read_records(sdg / "synthetic.jsonl")}
    for rid, before in synthetic.items():  # the negatives the source gave come first, mining filled up to k
        after = records[rid]
        assert after.negatives[:len(before.negatives)] == before.negatives
        assert len(after.negative_scores) == len(after.negatives)
    classification = [r for r in records.values() if r.task_type == "classification"]
    assert classification and all(len(r.negatives) >= 2 and r.positives[0] not in r.negatives for r in classification)

    stage_cfg = resolve_stage(recipe.training, "stage2", None)
    stage = load_stage_records(recipe.data, recipe.training, "stage2", mined / "records.jsonl", stage_cfg)
    stage = [r for r in stage if len(r.negatives) >= stage_cfg.hard_negatives]  # short_records: drop
    tok = AutoTokenizer.from_pretrained(str(tiny_encoder))
    examples = build_examples(stage, tok, stage_cfg.hard_negatives, 32, 32)
    seen: Counter = Counter()
    for step in range(-(-len(examples) // stage_cfg.batch_size)):  # one epoch of stage-2 batches
        indices = step_indices(len(examples), stage_cfg.batch_size, step, recipe.training.seed)
        for micro in device_micro_batches(examples, indices, 0, 1, stage_cfg.batch_size):
            seen.update(kind_of(records[examples.record_ids[i]]) for i in micro)
    for task in SDG_TASKS:
        assert seen[f"sdg:{task}"] > 0, seen
