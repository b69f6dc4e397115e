"""Source adapters on small fixture files the tests write: BEIR, HF datasets (save_to_disk), tables, pydoc."""

from __future__ import annotations

import json

import pytest

from embedpipe.data.config import SourceConfig
from embedpipe.data.sources import infer_layout, load_source


def _write_beir(folder, split="train"):
    folder.mkdir(parents=True, exist_ok=True)
    docs = [{"_id": "d1", "title": "Lists", "text": "A list is a mutable sequence."},
            {"_id": "d2", "title": "", "text": "A tuple is an immutable sequence."},
            {"_id": "d3", "title": "Dicts", "text": "A dict maps keys to values."}]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = [{"_id": "q1", "text": "what is a list"}, {"_id": "q2", "text": "immutable sequence"},
               {"_id": "q3", "text": "query with only a negative judgement"}, {"_id": "q4", "text": ""}]
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t0\nq2\td2\t2\nq3\td3\t0\nq4\td1\t1\nq9\td1\t1\n")
    return folder


def test_beir_folder(tmp_path):
    folder = _write_beir(tmp_path / "beir")
    got = load_source(SourceConfig(name="toy", kind="beir", path=str(folder), instruction="Find docs"))
    by_query = {r.query: r for r in got.records}
    assert set(by_query) == {"what is a list", "immutable sequence"}
    assert by_query["what is a list"].positives == ["Lists\nA list is a mutable sequence."]
    assert by_query["what is a list"].positive_ids == ["d1"]
    assert by_query["immutable sequence"].instruction == "Find docs"
    assert set(got.documents) == {"d1", "d2", "d3"}
    # q3 has no positive judgement, q4 an empty text, q9 no query: all counted
    assert dict(got.dropped) == {"no_positive": 1, "missing_query": 2}


def test_beir_missing_qrels_split_is_a_clear_error(tmp_path):
    folder = _write_beir(tmp_path / "beir", split="test")
    with pytest.raises(FileNotFoundError, match=r"qrels/train.tsv"):
        load_source(SourceConfig(name="toy", kind="beir", path=str(folder)))


def test_beir_bad_qrels_score_names_file_line_and_field(tmp_path):
    folder = _write_beir(tmp_path / "beir")
    with open(folder / "qrels" / "train.tsv", "a") as fh:
        fh.write("q2\td3\thigh\n")
    with pytest.raises(ValueError, match=r"qrels/train.tsv:8: field 'score': not an integer \('high'\)"):
        load_source(SourceConfig(name="toy", kind="beir", path=str(folder)))


def test_hf_triplet_layout_of_named_set(tmp_path):
    """MS MARCO's hub layout (query/positive/negative), from a save_to_disk folder with the layout named."""
    import datasets

    ds = datasets.Dataset.from_dict({"query": ["q1", "q2", ""], "positive": ["p1", "p2", "p3"],
                                     "negative": ["n1", None, "n3"]})
    ds.save_to_disk(str(tmp_path / "msmarco"))
    got = load_source(SourceConfig(name="msmarco", kind="hf", path=str(tmp_path / "msmarco"),
                                   layout="query_positive_negative"))
    assert [(r.query, r.positives, r.negatives) for r in got.records] == [("q1", ["p1"], ["n1"]), ("q2", ["p2"], [])]
    assert got.dropped == {"empty_text": 1}
    assert all(r.source == "msmarco" for r in got.records)


def test_hf_passages_layout_miracl_style(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([
        {"query_id": "1", "query": "Wer schrieb Faust?",
         "positive_passages": [{"docid": "7#0", "title": "Faust", "text": "Goethe schrieb Faust."}],
         "negative_passages": [{"docid": "8#1", "title": "Schiller", "text": "Schiller schrieb Die Räuber."}]},
        {"query_id": "2", "query": "leer", "positive_passages": [], "negative_passages": []},
    ])
    ds.save_to_disk(str(tmp_path / "miracl"))
    got = load_source(SourceConfig(name="miracl", kind="hf", path=str(tmp_path / "miracl"), language="de"))
    [record] = got.records
    assert record.positives == ["Faust\nGoethe schrieb Faust."] and record.positive_ids == ["7#0"]
    assert record.negative_ids == ["8#1"] and record.language == "de"
    assert got.dropped == {"no_positive": 1}
    assert got.documents["8#1"].startswith("Schiller")


def test_hf_classification_becomes_contrastive(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "neutral", "positive"])})
    ds = datasets.Dataset.from_dict({"text": ["I loved it", "It was fine", "Awful"], "label": [2, 1, 0]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "sentiment"))
    got = load_source(SourceConfig(name="sentiment", kind="hf", path=str(tmp_path / "sentiment"),
                                   task_type="classification"))
    first = got.records[0]
    assert first.task_type == "classification"
    assert first.query == "I loved it" and first.positives == ["positive"]
    assert sorted(first.negatives) == ["negative", "neutral"]  # the other label names
    assert [r.positives[0] for r in got.records] == ["positive", "neutral", "negative"]


def test_sts_pairs_are_symmetric_and_thresholded(tmp_path):
    rows = [{"sentence1": "A man plays a guitar.", "sentence2": "Someone is playing guitar.", "score": 4.6},
            {"sentence1": "A cat sleeps.", "sentence2": "The stock market fell.", "score": 0.2}]
    path = tmp_path / "sts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_source(SourceConfig(name="stsb", kind="jsonl", path=str(path), task_type="sts", min_score=4.0))
    assert [(r.query, r.positives[0]) for r in got.records] == [
        ("A man plays a guitar.", "Someone is playing guitar."), ("Someone is playing guitar.", "A man plays a guitar.")]
    assert all(r.task_type == "sts" for r in got.records)
    assert got.dropped == {"below_min_score": 1}


def test_paraphrase_layout_is_symmetric(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"anchor": ["How do I learn Python?"], "positive": ["What is the best way to learn Python?"]}) \
        .save_to_disk(str(tmp_path / "quora"))
    got = load_source(SourceConfig(name="quora", kind="hf", path=str(tmp_path / "quora"), layout="paraphrase",
                                   task_type="sts"))
    assert {(r.query, r.positives[0]) for r in got.records} == {
        ("How do I learn Python?", "What is the best way to learn Python?"),
        ("What is the best way to learn Python?", "How do I learn Python?")}


def test_hf_unknown_layout_is_a_clear_error(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"anchor": ["a b c"], "positive": ["d e f"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match="source 'ds': unknown layout 'tripplet'"):
        load_source(SourceConfig(name="ds", kind="hf", path=str(tmp_path / "ds"), layout="tripplet"))


def test_hf_beir_hub_layout(tmp_path):
    import datasets

    root = tmp_path / "scifact"
    datasets.Dataset.from_list([{"_id": "d1", "title": "T", "text": "Aspirin reduces fever."},
                                {"_id": "d2", "title": "", "text": "Unrelated."}]).save_to_disk(str(root / "corpus"))
    datasets.Dataset.from_list([{"_id": "q1", "text": "does aspirin reduce fever"}]).save_to_disk(str(root / "queries"))
    datasets.Dataset.from_list([{"query-id": "q1", "corpus-id": "d1", "score": 1}]).save_to_disk(str(root / "qrels"))
    got = load_source(SourceConfig(name="scifact", kind="hf", path=str(root), layout="beir_hub"))
    [record] = got.records
    assert record.positives == ["T\nAspirin reduces fever."] and record.positive_ids == ["d1"]


def test_local_tables_infer_layout_and_records_pass_through(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "what is pi", "answer": "about 3.14159"}]), path)
    got = load_source(SourceConfig(name="qa", kind="parquet", path=str(path)))
    assert [(r.query, r.positives) for r in got.records] == [("what is pi", ["about 3.14159"])]

    schema_file = tmp_path / "records.jsonl"
    schema_file.write_text(json.dumps({"id": "a", "query": "q", "positives": ["p"]}) + "\n{broken\n")
    got = load_source(SourceConfig(name="mine", kind="jsonl", path=str(schema_file), instruction="Do it"))
    assert [(r.id, r.source, r.instruction) for r in got.records] == [("a", "mine", "Do it")]
    assert got.dropped == {"malformed_json": 1}


def test_infer_layout_errors_name_the_columns():
    with pytest.raises(ValueError, match=r"cannot infer a column layout.*\['foo', 'x'\]"):
        infer_layout(["foo", "x"])
    assert infer_layout(["anchor", "positive", "negative_1", "negative_2"])["negative"] == ["negative_1", "negative_2"]


def test_pydoc_source_and_held_out_split():
    from embedpipe.data.pydoc_source import load_pydoc

    source = SourceConfig(name="pydoc", kind="pydoc", instruction="Find the Python docs section")
    data = load_pydoc(source, seed=42)
    again = load_pydoc(source, seed=42)
    assert [r.id for r in data.training.records] == [r.id for r in again.training.records]  # deterministic
    assert len(data.training.records) >= 200
    assert 10 <= len(data.eval_queries) <= 0.3 * len(data.training.records)
    held_docs = {d for rels in data.eval_qrels.values() for d in rels}
    train_docs = {d for r in data.training.records for d in r.positive_ids}
    assert not held_docs & train_docs  # no held-out passage is a training positive
    assert held_docs <= set(data.eval_corpus) and train_docs <= set(data.eval_corpus)
    train_queries = {r.query for r in data.training.records}
    assert not train_queries & set(data.eval_queries.values())
    kinds = {r.id.split("-")[1] for r in data.training.records}
    assert kinds == {"h", "ict"}
    other = load_pydoc(source, seed=7)
    assert set(other.eval_queries.values()) != set(data.eval_queries.values())  # the seed picks the split


def test_pydoc_dev_split_is_disjoint_from_training_and_test():
    """The dev split (model selection) shares no section with the training records nor with the test split, and
    holding it out leaves the test split as it was."""
    from embedpipe.data.pydoc_source import load_pydoc

    source = SourceConfig(name="pydoc", kind="pydoc")
    data = load_pydoc(source, seed=42)
    assert len(data.dev_queries) >= 10
    assert not set(data.dev_queries) & set(data.eval_queries)
    dev_docs = {d for rels in data.dev_qrels.values() for d in rels}
    test_docs = {d for rels in data.eval_qrels.values() for d in rels}
    train_docs = {d for r in data.training.records for d in r.positive_ids} | set(data.training.documents)
    assert dev_docs and not dev_docs & train_docs and not dev_docs & test_docs
    assert not {r.query for r in data.training.records} & set(data.dev_queries.values())
    without = load_pydoc(source.model_copy(update={"dev_fraction": 0.0}), seed=42)
    assert without.eval_qrels == data.eval_qrels and not without.dev_queries
    with pytest.raises(ValueError, match="holdout_fraction \\+ dev_fraction"):
        SourceConfig(name="pydoc", kind="pydoc", holdout_fraction=0.5, dev_fraction=0.5)


def test_pydoc_records_come_from_the_pinned_snapshot_not_the_interpreter(monkeypatch, tmp_path):
    """Another Python's pydoc_data.topics (each patch release rewords some) must not change the records."""
    import sys
    import types

    from embedpipe.data import pydoc_source

    source = SourceConfig(name="pydoc", kind="pydoc")
    before = pydoc_source.load_pydoc(source)
    other = types.ModuleType("pydoc_data.topics")
    other.topics = {"lists": "Lists\n*****\n\nAnother Python's wording of lists, long enough to be a passage here."}
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", other)
    after = pydoc_source.load_pydoc(source)
    assert [r.model_dump() for r in after.training.records] == [r.model_dump() for r in before.training.records]
    assert after.corpus == pydoc_source.snapshot_info() and after.corpus["python"] == "3.11.7"
    # a snapshot written from topics reads back the same; a damaged one is refused naming the file
    header = pydoc_source.write_snapshot(tmp_path / "t.json.gz", other.topics, python="9.9.9")
    assert pydoc_source.pinned_topics(tmp_path / "t.json.gz") == other.topics
    assert pydoc_source.snapshot_info(tmp_path / "t.json.gz") == header and header["python"] == "9.9.9"
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"bad.json.gz: not a pydoc topics snapshot"):
        pydoc_source.pinned_topics(tmp_path / "bad.json.gz")


def test_hub_names_map_to_the_paper_sets_layouts(monkeypatch):
    """A hub dataset name picks its config and column layout; the hub call itself is the boundary here."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"anchor": ["a claim"], "positive": ["evidence"], "negative": ["other"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = load_source(SourceConfig(name="fever", kind="hf", path="sentence-transformers/fever"))
    assert calls == [("sentence-transformers/fever", "triplet", "train")]
    assert [(r.query, r.positives, r.negatives) for r in got.records] == [("a claim", ["evidence"], ["other"])]
    from embedpipe.data.sources import HF_DATASETS, LAYOUTS

    for name, (layout, _, _) in HF_DATASETS.items():
        assert layout in LAYOUTS, name


def test_multilingual_sets_load_every_language_config(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append(name)
        return datasets.Dataset.from_list([{"query_id": "1", "query": f"query in {name}",
                                            "positive_passages": [{"docid": f"{name}-7", "title": "", "text": f"doc {name}"}],
                                            "negative_passages": []}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = load_source(SourceConfig(name="mrtydi", kind="hf", path="castorini/mr-tydi", language="multilingual"))
    assert calls[:2] == ["arabic", "bengali"] and len(calls) == 11
    assert {r.language for r in got.records} == {"ar", "bn", "en", "fi", "id", "ja", "ko", "ru", "sw", "te", "th"}
    assert len({r.id for r in got.records}) == 11


def test_beir_row_without_id_names_file_line_and_field(tmp_path):
    from embedpipe.data.sources import read_beir

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"text": "no id"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "b"}\n')
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: field '_id' is missing"):
        read_beir(folder, "train")
