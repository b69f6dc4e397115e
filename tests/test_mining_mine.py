"""End-to-end mining on real text (Python's docs) with the real default teacher (all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedpipe.mining.config import MiningConfig, TeacherConfig
from embedpipe.mining.corpus import Corpus, CorpusError
from embedpipe.mining.mine import MiningError, mine_hard_negatives

MAXLEN = 48  # short documents keep the real teacher fast on 2 cores


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """~130 documentation paragraphs; records ask about a topic, positive = its first paragraph. One record has two
    positives; one positive's text also appears under another id (must be excluded by text)."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("mining-data")
    corpus, records = [], []
    for name, text in sorted(topics.items()):
        paras = [p.strip()[:300] for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 80][:2]
        if not paras:
            continue
        corpus += [{"id": f"{name}-{j}", "text": p} for j, p in enumerate(paras)]
        if len(records) < 40:
            records.append({"id": name, "query": f"What does {name.replace('-', ' ')} do in Python?",
                            "positives": [paras[0]], "positive_ids": [f"{name}-0"]})
        if len(corpus) >= 130:
            break
    records[0]["positives"].append(corpus[1]["text"])
    records[0]["positive_ids"].append(corpus[1]["id"])
    corpus.append({"id": "copy-of-positive", "text": records[2]["positives"][0]})
    _write(root / "corpus.jsonl", corpus)
    _write(root / "records.jsonl", records)
    return root


def config(**kwargs) -> MiningConfig:
    base = dict(teachers=[TeacherConfig(model="all-minilm-l6-v2", max_length=MAXLEN)], candidates=30, chunk_size=32,
                top_k=4)
    base.update(kwargs)
    return MiningConfig(**base)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def mined(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mined") / "out.jsonl"
    cache = tmp_path_factory.mktemp("cache")
    stats = mine_hard_negatives(data / "records.jsonl", data / "corpus.jsonl", config(), out, cache, show=False)
    return out, cache, stats


def test_negatives_respect_margin_k_and_positives(mined, data):
    out, _, stats = mined
    rows = read(out)
    assert len(rows) == 40 and stats["records_out"] == 40
    corpus = {d["id"]: d["text"] for d in read(data / "corpus.jsonl")}
    total = 0
    for row in rows:
        assert len(row["negatives"]) <= 4
        assert len(row["negatives"]) == len(row["negative_scores"]) == len(row["negative_ids"])
        pos = min(row["positive_scores"])
        for neg_id, text, score in zip(row["negative_ids"], row["negatives"], row["negative_scores"]):
            assert score < 0.95 * pos
            assert neg_id not in row["positive_ids"]
            assert text.strip() not in {p.strip() for p in row["positives"]}
            assert corpus[neg_id] == text
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
        assert len(set(row["negatives"])) == len(row["negatives"])
        total += len(row["negatives"])
    assert total > 100  # the margin leaves most queries their k negatives
    assert stats["fewer_than_k"] == sum(len(r["negatives"]) < 4 for r in rows)
    assert stats["candidates_excluded"]["positive"] > 0 and stats["candidates_excluded"]["margin"] > 0
    assert rows[2]["id"] and "copy-of-positive" not in rows[2]["negative_ids"]


def test_scores_are_the_teachers_cosines(mined, data):
    from sentence_transformers import SentenceTransformer

    from embedpipe.assets import minilm_path

    out, _, _ = mined
    row = read(out)[5]
    model = SentenceTransformer(str(minilm_path()), device="cpu")
    model.max_seq_length = MAXLEN
    q = model.encode([row["query"]], normalize_embeddings=True)
    docs = model.encode(row["positives"] + row["negatives"], normalize_embeddings=True)
    expected = (q @ docs.T)[0]
    got = np.array(row["positive_scores"] + row["negative_scores"])
    np.testing.assert_allclose(got, expected, atol=3e-3)  # fp16 cache


def test_resume_from_chunk_cache_reembeds_only_unfinished_chunks(mined, data, tmp_path):
    out, cache, first = mined
    teacher_dir = Path(first["teachers"][0]["cache_dir"])
    assert first["teachers"][0]["embedded"] == first["teachers"][0]["chunks"] == 5
    (teacher_dir / "chunk-000003.json").unlink()  # as if the run died while writing chunk 3
    again = mine_hard_negatives(data / "records.jsonl", data / "corpus.jsonl", config(), tmp_path / "again.jsonl",
                                cache, show=False)
    assert (again["teachers"][0]["embedded"], again["teachers"][0]["reused"]) == (1, 4)
    assert read(tmp_path / "again.jsonl") == read(out)


def test_sampling_is_deterministic_per_seed(data, mined, tmp_path):
    _, cache, _ = mined
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        cfg = config(sample_from=(0, 10), top_k=2, seed=seed)
        mine_hard_negatives(data / "records.jsonl", data / "corpus.jsonl", cfg, tmp_path / f"{name}.jsonl", cache,
                            show=False)
        runs.append([r["negative_ids"] for r in read(tmp_path / f"{name}.jsonl")])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert all(len(n) <= 2 for n in runs[0])


def test_missing_positive_skipped_or_embedded(data, mined, tmp_path):
    _, cache, _ = mined
    rows = read(data / "records.jsonl")[:6]
    rows[1] = {"id": "orphan", "query": "How do I sort a list?", "positives": ["Use sorted() or list.sort()."]}
    rows[2] = {**rows[2], "positive_ids": ["no-such-id"], "positives": ["A text that is not in the corpus."]}
    records = _write(tmp_path / "records.jsonl", rows)
    skipped = mine_hard_negatives(records, data / "corpus.jsonl", config(), tmp_path / "s.jsonl", cache, show=False)
    assert skipped["skipped_missing_positive"] == 2 and skipped["records_out"] == 4
    assert set(skipped["missing_positive_examples"]) == {"orphan", rows[2]["id"]}
    assert "orphan" not in {r["id"] for r in read(tmp_path / "s.jsonl")}

    embedded = mine_hard_negatives(records, data / "corpus.jsonl", config(skip_missing_positive=False),
                                   tmp_path / "e.jsonl", cache, show=False)
    assert embedded["embedded_missing_positive"] == 2 and embedded["records_out"] == 6
    orphan = next(r for r in read(tmp_path / "e.jsonl") if r["id"] == "orphan")
    assert orphan["negatives"] and all(s < 0.95 * orphan["positive_scores"][0] for s in orphan["negative_scores"])


def test_all_positives_missing_is_an_error(data, mined, tmp_path):
    _, cache, _ = mined
    records = _write(tmp_path / "r.jsonl", [{"id": "x", "query": "q?", "positives": ["not in the corpus"]}])
    with pytest.raises(MiningError, match="none of the 1 records"):
        mine_hard_negatives(records, data / "corpus.jsonl", config(), tmp_path / "o.jsonl", cache, show=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(MiningError, match="has no records"):
        mine_hard_negatives(empty, data / "corpus.jsonl", config(), tmp_path / "o.jsonl", cache, show=False)
    assert sorted(p.name for p in tmp_path.glob("o.jsonl*")) == [], "a failed run left an output file behind"


def test_bad_corpus_inputs(data, tmp_path):
    records = data / "records.jsonl"
    cases = {
        "empty.jsonl": ("\n", "no documents"),
        "noid.jsonl": ('{"id": "a", "text": "fine"}\n{"text": "no id"}\n', r"noid.jsonl:2: field 'id'"),
        "notext.jsonl": ('{"id": "a", "text": "  "}\n', r"notext.jsonl:1: field 'text': empty"),
        "json.jsonl": ('{"id": "a", "text": "ok"}\n{"id": \n', r"json.jsonl:2: malformed JSON"),
        "dup.jsonl": ('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n',
                      r"dup.jsonl:3: field 'id': duplicate id 'a' \(first at line 1\)"),
    }
    for name, (body, message) in cases.items():
        (tmp_path / name).write_text(body)
        with pytest.raises(CorpusError, match=message):
            mine_hard_negatives(records, tmp_path / name, config(), tmp_path / "o.jsonl", tmp_path, show=False)


def test_other_weights_at_the_teacher_path_are_embedded_anew(data, tmp_path, minilm_path, caplog):
    """The cache never mixes in vectors of other weights saved at the same teacher path: a reinstalled model (same
    files, new modification times) or another model (here 128-dimensional) drops the cached chunks with a warning,
    counted, and embeds the corpus again."""
    import logging
    import os

    from sentence_transformers import SentenceTransformer, models

    teacher = tmp_path / "teacher"
    shutil.copytree(minilm_path, teacher)
    records = _write(tmp_path / "r.jsonl", read(data / "records.jsonl")[:3])
    cfg = config(teachers=[TeacherConfig(model=str(teacher), max_length=MAXLEN)], chunk_size=64)

    def mine():
        return mine_hard_negatives(records, data / "corpus.jsonl", cfg, tmp_path / "o.jsonl", tmp_path / "cache",
                                   show=False)["teachers"][0]

    first = mine()
    assert "discarded_stale" not in first and first["embedded"] == first["chunks"] > 1
    assert mine()["reused"] == first["chunks"]  # same weights: every chunk reused
    weights = next(teacher.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # reinstalled
    with caplog.at_level(logging.WARNING, logger="embedpipe.mining.cache"):
        again = mine()
    assert (again["embedded"], again["reused"], again["discarded_stale"]) == (first["chunks"], 0, first["chunks"])
    assert "written by other weights" in caplog.text and str(teacher) in caplog.text

    base = SentenceTransformer(str(minilm_path), device="cpu")
    projected = SentenceTransformer(modules=[base[0], base[1], models.Dense(384, 128), models.Normalize()],
                                    device="cpu")
    shutil.rmtree(teacher)
    projected.save(str(teacher))
    other = mine()
    assert (other["embedded"], other["discarded_stale"]) == (first["chunks"], first["chunks"])
    cached = sorted((tmp_path / "cache").glob("*/chunk-*.npy"))
    assert cached and all(np.load(p).shape[1] == 128 for p in cached)


def test_two_teachers_scores_are_combined(data, tmp_path, tiny_encoder):
    """MiniLM + the project's own encoder: every score is the weighted mean (or max) of the two teachers' cosines."""
    from sentence_transformers import SentenceTransformer

    from embedpipe.assets import minilm_path
    from embedpipe.encoder import Encoder

    records = _write(tmp_path / "r.jsonl", read(data / "records.jsonl")[:8])
    teachers = [TeacherConfig(model="all-minilm-l6-v2", max_length=MAXLEN, weight=3.0),
                TeacherConfig(model=str(tiny_encoder), max_length=MAXLEN)]
    minilm = SentenceTransformer(str(minilm_path()), device="cpu")
    minilm.max_seq_length = MAXLEN
    own = Encoder.from_pretrained(tiny_encoder, device="cpu", max_length=MAXLEN)
    from embedpipe.encoder.instructions import default_instruction

    for combine in ("mean", "max"):
        cfg = config(teachers=teachers, combine=combine, margin_type="abs", margin=0.01)
        stats = mine_hard_negatives(records, data / "corpus.jsonl", cfg, tmp_path / f"{combine}.jsonl",
                                    tmp_path / "cache", show=False)
        assert [t["kind"] for t in stats["teachers"]] == ["sentence-transformers", "embedpipe-encoder"]
        row = read(tmp_path / f"{combine}.jsonl")[3]
        texts = row["positives"] + row["negatives"]
        a = (minilm.encode([row["query"]], normalize_embeddings=True) @ minilm.encode(texts, normalize_embeddings=True).T)[0]
        b = (own.encode_queries([row["query"]], default_instruction("retrieval")) @ own.encode_documents(texts).T)[0]
        expected = 0.75 * a + 0.25 * b if combine == "mean" else np.maximum(a, b)
        got = np.array(row["positive_scores"] + row["negative_scores"])
        np.testing.assert_allclose(got, expected, atol=3e-3)
        assert all(s < row["positive_scores"][0] - 0.01 for s in row["negative_scores"])


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_ann_indexes_agree_with_exact_search(mined, data, tmp_path, index):
    out, cache, _ = mined
    cfg = config(index=index, ivf_nprobe=1000)  # nprobe >= nlist: IVF scans every list, so it is exact here
    stats = mine_hard_negatives(data / "records.jsonl", data / "corpus.jsonl", cfg, tmp_path / "ann.jsonl", cache,
                                show=False)
    assert stats["index"] == index
    exact = [r["negatives"] for r in read(out)]  # texts: duplicate documents tie, either copy is the same negative
    ann = [r["negatives"] for r in read(tmp_path / "ann.jsonl")]
    same = sum(a == b for a, b in zip(exact, ann))
    assert same >= (40 if index == "ivf" else 36)


def test_stats_logged_to_active_mlflow_run(data, mined, tmp_path):
    import mlflow

    _, cache, _ = mined
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        with mlflow.start_run() as run:
            mine_hard_negatives(data / "records.jsonl", data / "corpus.jsonl", config(), tmp_path / "o.jsonl", cache,
                                show=False)
        logged = mlflow.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri("")
    assert logged["mining.records_out"] == 40
    assert "mining.score.negative.mean" in logged and "mining.fewer_than_k" in logged


def test_cli_mine(data, mined, tmp_path):
    from typer.testing import CliRunner

    from embedpipe.cli import app

    _, cache, _ = mined
    result = CliRunner().invoke(app, ["mine", str(data / "records.jsonl"), str(data / "corpus.jsonl"),
                                      "--out", str(tmp_path / "o.jsonl"), "--cache-dir", str(cache),
                                      "--set", f"mining.teachers=[{{model: all-minilm-l6-v2, max_length: {MAXLEN}}}]",
                                      "--set", "mining.chunk_size=32", "--set", "mining.candidates=30",
                                      "--summary", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["records_out"] == 40
    assert len(read(tmp_path / "o.jsonl")) == 40


def test_corpus_changed_after_the_scan_names_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "a", "text": "xx"}\n\n{"id": "b", "text": "yy"}\n')
    corpus = Corpus(path)
    path.write_text('{"id": "a", "text": "xx"}\n\n{"id": "b", "text": yy }\n')  # same offsets, line 3 broken
    with pytest.raises(CorpusError, match=r"corpus.jsonl:3: malformed JSON"):
        corpus.chunk(0, 2)
    with pytest.raises(CorpusError, match=r"corpus.jsonl:3: malformed JSON"):
        corpus.read([1])
    path.write_text('{"id": "a", "text": "xx"}\n')
    with pytest.raises(CorpusError, match="changed after it was scanned"):
        corpus.chunk(0, 2)


def test_two_embedding_tasks_then_mining_equal_the_one_process_run(mined, data, tmp_path):
    """The cluster fan-out on CPU: two tasks, each with its own local cache, share chunks through one cache URI
    (a folder here, s3:// on a cluster); the mining step then embeds nothing and writes the same negatives."""
    from embedpipe.mining.mine import embed_corpus_shard

    out, _, first = mined
    shared = tmp_path / "shared-cache"
    parts = [embed_corpus_shard(data / "corpus.jsonl", config(), i, 2, tmp_path / f"task-{i}", str(shared))
             for i in range(2)]
    assert [p["teachers"][0]["embedded"] for p in parts] == [3, 2]  # chunks 0, 2, 4 and 1, 3 of 5
    again = mine_hard_negatives(data / "records.jsonl", data / "corpus.jsonl", config(), tmp_path / "fan.jsonl",
                                tmp_path / "miner", show=False, cache_uri=str(shared))
    assert (again["teachers"][0]["embedded"], again["teachers"][0]["reused"]) == (0, 5)
    assert read(tmp_path / "fan.jsonl") == read(out)
    with pytest.raises(ValueError, match=r"index must be in \[0, 2\)"):
        embed_corpus_shard(data / "corpus.jsonl", config(), 2, 2, tmp_path / "bad", str(shared))


def test_records_keep_their_own_negatives_and_mining_fills_up_to_k(data, mined, tmp_path):
    """A record's own negatives (e.g. an LLM's hard negative written beside its positive, which joins the corpus as
    a second file) come first with their teacher scores; mining adds the rest up to top_k, never the same text."""
    rows = read(data / "records.jsonl")[:6]
    sdg_docs = [{"id": "sdg-doc-1", "text": "A recipe for tomato soup: simmer tomatoes with basil for an hour."},
                {"id": "sdg-doc-2", "text": "The positive an LLM wrote about Python's while loop and its else."}]
    _write(tmp_path / "sdg_documents.jsonl", sdg_docs)
    rows[0]["negatives"] = [sdg_docs[0]["text"], rows[0]["positives"][0]]  # the second equals its positive: dropped
    rows[1] = {"id": "llm", "query": "How does a while loop with an else clause work?", "task_type": "retrieval",
               "positives": [sdg_docs[1]["text"]], "negatives": [sdg_docs[0]["text"], "Six given negatives",
                                                                "are more", "than top_k", "and all", "stay"]}
    rows[2]["negatives"] = ["A negative that is in no corpus file at all."]
    out = tmp_path / "out.jsonl"
    from embedpipe.data.schema import Record

    stats = mine_hard_negatives(iter([Record.model_validate(r) for r in rows]),
                                [data / "corpus.jsonl", tmp_path / "sdg_documents.jsonl"], config(), out,
                                mined[1], show=False)
    got = {r["id"]: r for r in read(out)}
    assert stats["records_out"] == 6 and stats["skipped_missing_positive"] == 0  # the LLM's positive is in the corpus
    first = got[rows[0]["id"]]
    assert first["negatives"][0] == sdg_docs[0]["text"] and len(first["negatives"]) == 4
    assert first["negative_ids"][0] == "sdg-doc-1" and rows[0]["positives"][0] not in first["negatives"]
    assert len(set(first["negatives"])) == 4 and len(first["negative_scores"]) == 4
    assert got["llm"]["negatives"] == rows[1]["negatives"]  # more than k given: all kept, nothing mined
    third = got[rows[2]["id"]]
    assert third["negatives"][0] == rows[2]["negatives"][0] and third["negative_ids"][0] == f"{rows[2]['id']}:negative:0"
    assert len(third["negatives"]) == 4
    assert stats["given_negatives"] == {"in": 9, "kept": 8, "dropped_equal_to_positive": 1, "dropped_duplicate": 0}
    own = {rows[0]["id"]: 1, "llm": 6, rows[2]["id"]: 1}
    assert stats["mined_negatives"] == sum(len(r["negatives"]) - own.get(i, 0) for i, r in got.items()) >= 14
    assert stats["by_task_type"]["retrieval"]["records_out"] == 6
    assert stats["corpus_documents"] == len(read(data / "corpus.jsonl")) + 2
