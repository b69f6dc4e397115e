"""Data mix proportions, decontamination, and the whole build on the embedded default and on fixture sources."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from embedpipe.data.decontaminate import decontaminate, normalise
from embedpipe.data.mix import allocate, select_stage_records
from embedpipe.data.schema import Record, read_records
from embedpipe.recipe import load_recipe, recipes_dir


def _recipe(tmp_path, sources, **data):
    tree = {"name": "t", "model": {"base": "smollm2-135m-instruct"},
            "data": {"sources": sources, **data}}
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(tree))
    return load_recipe(path)


def _records(source, n, task="retrieval"):
    return [Record(id=f"{source}-{i}", query=f"{source} query {i}", positives=[f"{source} doc {i}"], source=source,
                   task_type=task) for i in range(n)]


SOURCES = [
    {"name": "a", "kind": "jsonl", "path": "a.jsonl", "weight_stage1": 1.0, "weight_stage2": 1.0},
    {"name": "b", "kind": "jsonl", "path": "b.jsonl", "weight_stage1": 2.0, "weight_stage2": 0.5},
    {"name": "c", "kind": "jsonl", "path": "c.jsonl", "task_type": "sts", "weight_stage1": 0.0, "weight_stage2": 1.0},
]


def test_stage_mix_follows_weights(tmp_path):
    recipe = _recipe(tmp_path, SOURCES)
    records = _records("a", 100) + _records("b", 100) + _records("c", 40, task="sts")
    stage1 = Counter(r.source for r in select_stage_records(records, recipe.data, "stage1"))
    assert stage1 == {"a": 100, "b": 200}  # weight 2 = every record twice, weight 0 = left out
    stage2 = Counter(r.source for r in select_stage_records(records, recipe.data, "stage2"))
    assert stage2 == {"a": 100, "b": 50, "c": 40}
    # each record of an upsampled source appears exactly twice
    assert set(Counter(r.id for r in select_stage_records(records, recipe.data, "stage1") if r.source == "b").values()) == {2}


def test_stage_size_rescales_keeping_proportions_and_is_seeded(tmp_path):
    recipe = _recipe(tmp_path, SOURCES, stage1_records=90, stage2_records=38)
    records = _records("a", 100) + _records("b", 100) + _records("c", 40, task="sts")
    first = select_stage_records(records, recipe.data, "stage1")
    assert Counter(r.source for r in first) == {"a": 30, "b": 60}
    assert [r.id for r in select_stage_records(records, recipe.data, "stage1")] == [r.id for r in first]
    assert [r.id for r in select_stage_records(records, recipe.data, "stage1", seed=1)] != [r.id for r in first]
    assert Counter(r.source for r in select_stage_records(records, recipe.data, "stage2")) == {"a": 20, "b": 10, "c": 8}


def test_overrides_and_stage_task_types(tmp_path):
    recipe = _recipe(tmp_path, SOURCES)
    records = _records("a", 10) + _records("b", 10) + _records("c", 10, task="sts")
    mixed = Counter(r.source for r in select_stage_records(records, recipe.data, "stage2", weights_override={"a": 3.0, "c": 0}))
    assert mixed == {"a": 30, "b": 5}
    assert Counter(r.source for r in select_stage_records(records, recipe.data, "stage2", task_types=["sts"])) \
        == {"c": 10}
    assert Counter(r.source for r in select_stage_records(records, recipe.data, "stage2", task_types=["retrieval"])) \
        == {"a": 10, "b": 5}
    with pytest.raises(ValueError, match="unknown source 'zzz'"):
        select_stage_records(records, recipe.data, "stage2", weights_override={"zzz": 1.0})
    with pytest.raises(ValueError, match="stage must be"):
        select_stage_records(records, recipe.data, "stage3")


def test_allocate_rounds_to_the_total():
    counts = allocate({"x": 10, "y": 10, "z": 10}, {"x": 1, "y": 1, "z": 1}, 10)
    assert sum(counts.values()) == 10 and max(counts.values()) - min(counts.values()) <= 1


def test_decontamination_normalised_exact_match_reported_per_source():
    records = [Record(id="1", query="What is  a LIST?", positives=["x doc"], source="s1"),
               Record(id="2", query="other question", positives=["A tuple is immutable!"], source="s2"),
               Record(id="3", query="clean question", positives=["clean document"], source="s2")]
    eval_sets = {"evalA": {normalise("what is a list")}, "evalB": {normalise("a tuple, is immutable")}}
    kept, report = decontaminate(records, eval_sets)
    assert [r.id for r in kept] == ["3"]
    assert report["by_source"] == {"s1": 1, "s2": 1}
    assert report["by_eval_set"] == {"evalA": 1, "evalB": 1}
    assert normalise("Ｃａｆé — Ünïcode") == normalise("café ünïcode")


def test_build_embedded_default(tmp_path):
    from embedpipe.evaluation.config import LocalTaskConfig

    from embedpipe.data.build import build_training_data

    recipe = load_recipe(recipes_dir() / "local.yaml")
    out = tmp_path / "data"
    manifest = build_training_data(recipe.data, out, stages={"stage1": recipe.training.stage1, "stage2": recipe.training.stage2})
    records = read_records(out / "records.jsonl")
    assert manifest["records"] == len(records) >= 200
    assert manifest["by_source"] == {"pydoc": len(records)}
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    corpus_ids = {row["id"] for row in corpus}
    assert all(set(r.positive_ids or []) <= corpus_ids for r in records)
    tasks = json.loads((out / "eval" / "tasks.json").read_text())
    [task] = [LocalTaskConfig.model_validate(t) for t in tasks]
    assert task.type == "retrieval" and (out / "eval" / task.path / "qrels" / "test.tsv").is_file()
    held_queries = [json.loads(line)["text"] for line in (out / "eval" / task.path / "queries.jsonl").read_text().splitlines()]
    qrels = (out / "eval" / task.path / "qrels" / "test.tsv").read_text().splitlines()[1:]
    held_docs = {line.split("\t")[1] for line in qrels}
    assert held_queries and not held_docs & corpus_ids  # held-out passages are not in the training corpus
    assert not {normalise(q) for q in held_queries} & {normalise(r.query) for r in records}
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["stages"]["stage1"]["by_source"] == {"pydoc": len(records)}
    assert saved["eval_tasks"] == ["PydocRetrieval"]
    pinned = saved["corpora"]["pydoc"]  # the pinned Python docs snapshot, not the running interpreter's
    assert pinned["source"] == "pydoc_data.topics" and pinned["python"] == "3.11.7" and len(pinned["sha256"]) == 64


def test_build_decontaminates_against_a_named_eval_set_and_counts_drops(tmp_path):
    from embedpipe.data.build import build_training_data

    train = tmp_path / "train.jsonl"
    rows = [{"query": "what is a list", "answer": "A list is a mutable sequence."},
            {"query": "what is a dict", "answer": "A dict maps keys to values."},
            {"query": "", "answer": "orphan answer"},
            {"query": "what is a set", "answer": "A set is an unordered collection."}]
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    evalset = tmp_path / "evalset"
    evalset.mkdir()
    (evalset / "corpus.jsonl").write_text(json.dumps({"_id": "e1", "title": "", "text": "a DICT maps keys to values"}) + "\n")
    (evalset / "queries.jsonl").write_text(json.dumps({"_id": "eq", "text": "What is a set?"}) + "\n")
    (evalset / "qrels").mkdir()
    (evalset / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\neq\te1\t1\n")
    recipe = _recipe(tmp_path, [{"name": "qa", "kind": "jsonl", "path": str(train)}],
                     decontaminate_against=[str(evalset)])
    manifest = build_training_data(recipe.data, tmp_path / "out")
    assert [r.query for r in read_records(tmp_path / "out" / "records.jsonl")] == ["what is a list"]
    assert manifest["decontamination"]["by_source"] == {"qa": 2}
    assert manifest["dropped"] == {"qa": {"empty_text": 1}}
    corpus = (tmp_path / "out" / "corpus.jsonl").read_text()
    assert "keys to values" not in corpus  # the eval document left the mining corpus too
    strict = _recipe(tmp_path, [{"name": "qa", "kind": "jsonl", "path": str(train)}], lenient=False)
    with pytest.raises(ValueError, match=r"source 'qa'.*'empty_text': 1"):
        build_training_data(strict.data, tmp_path / "strict")


def test_combine_for_mining_adds_synthetic_decontaminates_it_once_and_lists_its_documents(tmp_path):
    from embedpipe.data.build import combine_for_mining, write_beir
    from embedpipe.data.schema import write_records

    write_records(_records("a", 3), tmp_path / "records.jsonl")
    write_records(_records("a", 1) + [
        Record(id="s1", query="held out query", positives=["p"], source="synthetic", generator="g"),
        Record(id="synthetic-retrieval_triplet-000001", query="how do loops work", positives=["Loops repeat code."],
               negatives=["Soup is hot."], source="synthetic", generator="g"),
        Record(id="synthetic-query_generation-000002", query="what is a dict", positives=["A dict maps keys."],
               positive_ids=["c1"], source="synthetic", generator="g"),
    ], tmp_path / "synthetic.jsonl")
    eval_dir = tmp_path / "eval"
    write_beir(eval_dir / "t", {"d": "some doc"}, {"q": "Held-out query"}, {"q": {"d": 1}})
    (eval_dir / "tasks.json").write_text(json.dumps([{"name": "T", "type": "retrieval", "path": "t"}]))
    combined = combine_for_mining(tmp_path / "records.jsonl", tmp_path / "synthetic.jsonl", eval_dir=eval_dir)
    records = list(combined.records())
    assert [r.id for r in records] == ["a-0", "a-1", "a-2", "synthetic-retrieval_triplet-000001",
                                       "synthetic-query_generation-000002"]
    report = combined.report
    assert report["synthetic_duplicate_ids_dropped"] == 1
    assert report["synthetic"]["decontamination"]["by_source"] == {"synthetic": 1}
    assert report["synthetic"]["by_kind"] == {"retrieval": 1, "sdg:retrieval_triplet": 1, "sdg:query_generation": 1}
    # the triplet's LLM-written positive and negative join the mining corpus; query generation's positive is the
    # corpus's own document (found by id), a-0's synthetic copy came from records with ids of its own
    texts = sorted(d["text"] for d in combined.documents())
    assert texts == sorted(["Loops repeat code.", "Soup is hot.", *_records("a", 1)[0].positives])


def test_mteb_benchmark_texts_are_collected_up_to_the_hub(monkeypatch):
    """A benchmark name resolves through mteb; each task's loaded data (nested datasets) gives its texts."""
    import datasets
    import mteb

    from embedpipe.data.decontaminate import collect_eval_texts

    class FakeTask:
        def load_data(self):
            self.dataset = {"default": {"test": {
                "corpus": datasets.Dataset.from_dict({"id": ["d1"], "text": ["Aspirin reduces fever in adults."]}),
                "queries": datasets.Dataset.from_dict({"id": ["q1"], "text": ["does aspirin reduce fever"]}),
                "relevant_docs": {"q1": {"d1": 1}}}}}

    seen = []
    monkeypatch.setattr(mteb, "get_benchmark", lambda name: seen.append(name) or type("B", (), {"tasks": [FakeTask()]})())
    sets = collect_eval_texts(["MTEB(Multilingual, v2)"])
    assert seen == ["MTEB(Multilingual, v2)"]
    assert sets["MTEB(Multilingual, v2)"] == {normalise("Aspirin reduces fever in adults."),
                                             normalise("does aspirin reduce fever")}
    kept, report = decontaminate([Record(id="x", query="Does aspirin reduce fever?", positives=["p doc"], source="nq")],
                                 sets)
    assert kept == [] and report["by_source"] == {"nq": 1}
