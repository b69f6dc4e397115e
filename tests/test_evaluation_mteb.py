"""Evaluation through mteb on local-file tasks: agreement with mteb itself, the encoder wrapper, result layout,
skipping and the embedding cache, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedpipe.encoder import NotAnEncoderExport
from embedpipe.evaluation.config import EvaluationConfig, LocalTaskConfig
from embedpipe.evaluation.tasks import TaskFileError, build_task, write_tasks_file

STS_PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.6),
    ("A dog runs across the field.", "A dog is running through the grass.", 4.0),
    ("The cat sleeps on the sofa.", "A cat is asleep on the couch.", 4.7),
    ("Two children are playing football.", "Kids play soccer in the park.", 3.8),
    ("The stock market fell sharply today.", "Shares dropped steeply on Monday.", 3.9),
    ("He is cooking pasta in the kitchen.", "A man prepares spaghetti.", 3.4),
    ("The train arrives at noon.", "The bus leaves in the morning.", 1.2),
    ("She reads a book in the library.", "A woman is reading in a library.", 4.2),
    ("A plane is taking off.", "An airplane departs from the runway.", 4.5),
    ("The weather is sunny and warm.", "It is raining heavily outside.", 0.8),
    ("A boy rides a bicycle.", "A child is cycling down the street.", 3.9),
    ("The chef is chopping vegetables.", "A man is playing the piano.", 0.2),
    ("Python is a programming language.", "Snakes live in many habitats.", 0.6),
    ("The meeting was postponed until Friday.", "The meeting has been moved to Friday.", 4.6),
    ("A group of people are dancing.", "People dance at a party.", 4.0),
    ("The river flooded the village.", "The village was flooded by the river.", 4.9),
    ("He bought a new car yesterday.", "Yesterday he purchased a new vehicle.", 4.7),
    ("A bird is singing in the tree.", "The computer crashed during the update.", 0.0),
    ("The students are taking an exam.", "Pupils sit a test in the classroom.", 4.1),
    ("A woman is playing the violin.", "A man is playing the guitar.", 1.8),
    ("The sun rises in the east.", "The moon is bright tonight.", 0.9),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_pydoc_beir(folder: Path, n: int = 30) -> Path:
    """A BEIR retrieval task over Python's own docs: each topic's text is a document, its name is the query."""
    from pydoc_data.topics import topics

    items = sorted(topics.items())[:n]
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"doc-{k}", "title": "", "text": v[:600]} for k, v in items])
    write_jsonl(folder / "queries.jsonl",
                [{"_id": f"q-{k}", "text": f"Python documentation on {k.replace('-', ' ')}"} for k, _ in items])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q-{k}\tdoc-{k}\t1\n" for k, _ in items))
    return folder


def write_other_types(root: Path) -> list[dict]:
    """Small files for the other local task types."""
    topics = {"sports": ["The team won the final match.", "She scored two goals.", "The coach praised the players.",
                         "He ran the marathon in record time.", "The referee showed a red card."],
              "food": ["Add salt to the boiling water.", "The soup needs more pepper.", "Bake the bread for an hour.",
                       "Fresh basil improves the sauce.", "Slice the tomatoes thinly."],
              "tech": ["The laptop has a fast processor.", "Update the operating system.", "The server crashed at night.",
                       "Install the new graphics driver.", "The phone battery drains quickly."]}
    labelled = [{"text": t, "label": label} for label, texts in topics.items() for t in texts]
    write_jsonl(root / "classification" / "train.jsonl", labelled)
    write_jsonl(root / "classification" / "test.jsonl", labelled[::2])
    write_jsonl(root / "clustering.jsonl", labelled)
    pairs = [{"sentence1": a, "sentence2": b, "label": int(s > 3)} for a, b, s in STS_PAIRS]
    write_jsonl(root / "pairs.jsonl", pairs)
    write_jsonl(root / "bitext.jsonl", [{"sentence1": a, "sentence2": b} for a, b, _ in STS_PAIRS[:10]])
    write_jsonl(root / "rerank.jsonl", [{"query": a, "positive": [b], "negative": [STS_PAIRS[i - 1][1], STS_PAIRS[i - 2][1]]}
                                        for i, (a, b, _) in enumerate(STS_PAIRS[:10])])
    return [
        {"name": "LocalClassification", "type": "classification", "path": "classification"},
        {"name": "LocalClustering", "type": "clustering", "path": "clustering.jsonl"},
        {"name": "LocalPairs", "type": "pair_classification", "path": "pairs.jsonl"},
        {"name": "LocalBitext", "type": "bitext", "path": "bitext.jsonl"},
        {"name": "LocalRerank", "type": "reranking", "path": "rerank.jsonl"},
    ]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("local-tasks")
    write_jsonl(root / "sts.jsonl", [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in STS_PAIRS])
    write_pydoc_beir(root / "pydoc")
    write_tasks_file([{"name": "LocalSTS", "type": "sts", "path": "sts.jsonl"},
                      {"name": "PydocRetrieval", "type": "retrieval", "path": "pydoc"}], root)
    return root


def _independent_mteb_tasks(tasks_dir: Path):
    """The same data as mteb tasks written directly against mteb's API (no embedpipe code)."""
    from datasets import Dataset, DatasetDict
    from mteb import TaskMetadata
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS

    common = dict(description="d", dataset={"path": "x/y", "revision": "1"}, category="t2t",
                  eval_splits=["test"], eval_langs=["eng-Latn"], modalities=["text"])

    def rows(path):
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    class STS(AbsTaskSTS):
        metadata = TaskMetadata(name="LocalSTS", type="STS", main_score="cosine_spearman", **common)
        min_score, max_score = 0, 5

        def load_data(self, num_proc=None, **kwargs):
            data = rows(tasks_dir / "sts.jsonl")
            self.dataset = DatasetDict({"test": Dataset.from_list(
                [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": r["score"]} for r in data])})
            self.data_loaded = True

    class Retrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(name="PydocRetrieval", type="Retrieval", main_score="ndcg_at_10", **common)

        def load_data(self, num_proc=None, **kwargs):
            folder = tasks_dir / "pydoc"
            corpus = [{"id": r["_id"], "title": r["title"], "text": r["text"]} for r in rows(folder / "corpus.jsonl")]
            queries = [{"id": r["_id"], "text": r["text"]} for r in rows(folder / "queries.jsonl")]
            qrels = {}
            for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
                q, d, s = line.split("\t")
                qrels.setdefault(q, {})[d] = int(s)
            self.dataset = {"default": {"test": {"corpus": Dataset.from_list(corpus),
                                                 "queries": Dataset.from_list(queries),
                                                 "relevant_docs": qrels, "top_ranked": None}}}
            self.data_loaded = True

    return [STS(), Retrieval()]


def test_minilm_scores_equal_mteb_on_the_same_data(tasks_dir, minilm_path, tmp_path):
    import mteb
    from sentence_transformers import SentenceTransformer

    from embedpipe.evaluation.run import evaluate

    summary = evaluate("all-minilm-l6-v2", EvaluationConfig(batch_size=16), tmp_path / "eval",
                       extra_tasks_dir=tasks_dir, cache_dir=tmp_path / "emb", model_name="sentence-transformers/all-MiniLM-L6-v2")
    direct = mteb.evaluate(SentenceTransformer(str(minilm_path)), _independent_mteb_tasks(tasks_dir), cache=None,
                           encode_kwargs={"batch_size": 16}, show_progress_bar=False)
    expected = {r.task_name: r for r in direct.task_results}
    assert set(summary["scores"]) == {"LocalSTS", "PydocRetrieval"}
    for task, score in summary["scores"].items():
        assert score == pytest.approx(expected[task].get_score(), abs=1e-6), task
    assert 0.5 < summary["scores"]["LocalSTS"] <= 1.0
    assert 0.5 < summary["scores"]["PydocRetrieval"] <= 1.0
    # every metric of the saved mteb result file agrees, not only the main score
    saved = json.loads((Path(summary["results_dir"]) / "PydocRetrieval.json").read_text())["scores"]["test"][0]
    for metric in ("ndcg_at_10", "map_at_10", "recall_at_5", "mrr_at_10"):
        assert saved[metric] == pytest.approx(expected["PydocRetrieval"].scores["test"][0][metric], abs=1e-6)
    assert summary["mean_task"] == pytest.approx(np.mean(list(summary["scores"].values())))
    assert summary["mean_per_type"].keys() == {"STS", "Retrieval"}


def test_wrapper_vectors_equal_encoder_encode(tiny_encoder):
    from datasets import Dataset
    from mteb._create_dataloaders import create_dataloader
    from mteb.types import PromptType

    from embedpipe.encoder import Encoder, default_instruction, format_query
    from embedpipe.evaluation.model import EmbedpipeEncoder

    texts = [a for a, _, _ in STS_PAIRS[:9]]
    dataset = Dataset.from_dict({"id": [str(i) for i in range(len(texts))], "text": texts})
    sts = build_task(LocalTaskConfig(name="S", type="sts", path=str(tiny_encoder))).metadata
    retrieval = build_task(LocalTaskConfig(name="R", type="retrieval", path=str(tiny_encoder),
                                           instruction="Find the passage")).metadata
    wrapper = EmbedpipeEncoder(tiny_encoder, "embedpipe/tiny", "r", instructions={"R": "Find the passage"})
    encoder = Encoder.from_pretrained(tiny_encoder, device="cpu")

    def run(meta, prompt_type):
        loader = create_dataloader(dataset, task_metadata=meta, prompt_type=prompt_type, batch_size=4)
        return wrapper.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default",
                              prompt_type=prompt_type, batch_size=4)

    sts_instruction = default_instruction("sts")
    np.testing.assert_allclose(run(sts, None), encoder.encode([format_query(t, sts_instruction) for t in texts]),
                               atol=1e-5)
    np.testing.assert_allclose(run(retrieval, PromptType.query),
                               encoder.encode_queries(texts, "Find the passage"), atol=1e-5)
    np.testing.assert_allclose(run(retrieval, PromptType.document),
                               encoder.encode_documents(texts, task_type="retrieval"), atol=1e-5)
    assert wrapper.encoded_texts == 27


def test_precision_auto_encodes_the_corpus_under_bf16_autocast_where_the_cpu_has_native_bf16(tiny_encoder,
                                                                                             monkeypatch):
    """``evaluation.precision: auto``: a retrieval corpus under bf16 autocast on a CPU with native bf16; queries and
    uni-encoder texts (short, where bf16 moves a vector most) in fp32; all fp32 without native bf16 or by default."""
    from datasets import Dataset
    from mteb._create_dataloaders import create_dataloader
    from mteb.types import PromptType

    from embedpipe.encoder import encoder as encoder_module
    from embedpipe.evaluation.model import EmbedpipeEncoder

    texts = [a for a, _, _ in STS_PAIRS[:9]]
    dataset = Dataset.from_dict({"id": [str(i) for i in range(len(texts))], "text": texts})
    sts = build_task(LocalTaskConfig(name="S", type="sts", path=str(tiny_encoder))).metadata
    retrieval = build_task(LocalTaskConfig(name="R", type="retrieval", path=str(tiny_encoder))).metadata

    def encode(precision, meta, prompt_type):
        wrapper = EmbedpipeEncoder(tiny_encoder, "embedpipe/tiny", "r", precision=precision, device="cpu")
        loader = create_dataloader(dataset, task_metadata=meta, prompt_type=prompt_type, batch_size=4)
        return wrapper.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default",
                              prompt_type=prompt_type, batch_size=4)

    sides = [(retrieval, PromptType.document), (retrieval, PromptType.query), (sts, None)]
    fp32 = [encode("fp32", meta, kind) for meta, kind in sides]
    for native in (True, False):
        monkeypatch.setattr(encoder_module, "cpu_has_native_bf16", lambda: native)
        corpus, queries, uni = (encode("auto", meta, kind) for meta, kind in sides)
        np.testing.assert_array_equal(queries, fp32[1])
        np.testing.assert_array_equal(uni, fp32[2])
        if native:
            assert not np.array_equal(corpus, fp32[0])  # computed in bf16 ...
            assert float((corpus * fp32[0]).sum(1).min()) > 0.9  # ... near the fp32 vectors (short texts move most)
        else:
            np.testing.assert_array_equal(corpus, fp32[0])


def test_all_local_task_types_results_layout_skip_and_embedding_cache(tiny_encoder, tasks_dir, tmp_path):
    import shutil

    from embedpipe.evaluation.run import evaluate

    extra = tmp_path / "extra"
    shutil.copytree(tasks_dir, extra)
    items = json.loads((extra / "tasks.json").read_text()) + write_other_types(extra)
    (extra / "tasks.json").write_text(json.dumps(items))
    config = EvaluationConfig(batch_size=16, instructions={"STS": "Rate how similar the two sentences are"})
    out, cache = tmp_path / "eval", tmp_path / "emb"
    first = evaluate(tiny_encoder, config, out, extra_tasks_dir=extra, cache_dir=cache, model_name="tiny")
    names = [i["name"] for i in items]
    assert sorted(first["scores"]) == sorted(names)
    assert first["skipped"] == [] and first["encoded_texts"] > 0
    assert all(0.0 <= s <= 1.0 for s in first["scores"].values())
    results = out / "results" / "embedpipe__tiny" / first["revision"]
    assert Path(first["results_dir"]) == results
    assert {p.stem for p in results.glob("*.json")} == set(names) | {"model_meta"}
    assert json.loads((results / "model_meta.json").read_text())["name"] == "embedpipe/tiny"
    assert first["task_types"]["LocalPairs"] == "PairClassification"
    assert set(first["mean_per_type"]) == {"STS", "Retrieval", "Classification", "Clustering", "PairClassification",
                                           "BitextMining", "Reranking"}

    again = evaluate(tiny_encoder, config, out, extra_tasks_dir=extra, cache_dir=cache, model_name="tiny")
    assert sorted(again["skipped"]) == sorted(names) and again["encoded_texts"] == 0
    assert again["scores"] == pytest.approx(first["scores"], abs=1e-6)  # result files keep 6 decimals

    (results / "LocalSTS.json").unlink()
    (results / "PydocRetrieval.json").unlink()
    third = evaluate(tiny_encoder, config, out, extra_tasks_dir=extra, cache_dir=cache, model_name="tiny")
    assert sorted(third["evaluated"]) == ["LocalSTS", "PydocRetrieval"]
    assert third["encoded_texts"] == 0  # everything came from the embedding cache
    assert third["scores"]["LocalSTS"] == pytest.approx(first["scores"]["LocalSTS"], abs=1e-6)


def test_reference_results_give_a_borda_rank_and_mlflow_gets_the_scores(tiny_encoder, tasks_dir, tmp_path):
    import mlflow

    from embedpipe.evaluation.run import evaluate

    reference = tmp_path / "reference"
    for model, sts, ret in (("org/strong", 0.99, 0.99), ("org/weak", -0.5, 0.0)):
        folder = reference / model.replace("/", "__") / "rev1"
        folder.mkdir(parents=True)
        for task, score in (("LocalSTS", sts), ("PydocRetrieval", ret)):
            (folder / f"{task}.json").write_text(json.dumps({
                "dataset_revision": "x", "task_name": task, "mteb_version": "2.26.24", "evaluation_time": 1.0,
                "scores": {"test": [{"main_score": score, "hf_subset": "default", "languages": ["eng-Latn"]}]}}))
    config = EvaluationConfig(reference_results=str(reference), batch_size=16)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        mlflow.set_experiment("eval-test")
        with mlflow.start_run() as run:
            summary = evaluate(tiny_encoder, config, tmp_path / "eval", extra_tasks_dir=tasks_dir,
                               cache_dir=tmp_path / "emb", model_name="tiny")
        metrics = mlflow.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri("")
    assert summary["borda_rank"] == 2
    assert [r["model"] for r in summary["leaderboard"]] == ["org/strong", "embedpipe/tiny", "org/weak"]
    assert metrics["eval.LocalSTS"] == pytest.approx(summary["scores"]["LocalSTS"])
    assert metrics["eval.mean_task"] == pytest.approx(summary["mean_task"])
    assert metrics["eval.borda_rank"] == 2


# ------------------------------------------------------------------------------------------------ bad input
def test_task_file_errors_name_file_line_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "sts.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 1},
                                               {"sentence1": "a", "score": 2}])
    task = build_task(LocalTaskConfig(name="Bad", type="sts", path=str(bad)))
    with pytest.raises(TaskFileError, match=r"sts\.jsonl:2: field 'sentence2' is missing"):
        task.load_data()
    (tmp_path / "broken.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\nnot json\n')
    with pytest.raises(TaskFileError, match=r"broken\.jsonl:2: invalid JSON"):
        build_task(LocalTaskConfig(name="B", type="sts", path=str(tmp_path / "broken.jsonl"))).load_data()
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 2}])
    with pytest.raises(TaskFileError, match=r"pairs\.jsonl:1: field 'label' has an invalid value 2"):
        build_task(LocalTaskConfig(name="P", type="pair_classification", path=str(pairs))).load_data()
    with pytest.raises(TaskFileError, match="does not exist"):
        build_task(LocalTaskConfig(name="M", type="sts", path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(TaskFileError, match="cannot be defined over local files"):
        build_task(LocalTaskConfig(name="S", type="summarization", path=str(pairs)))


def test_qrels_naming_unknown_documents_are_refused(tmp_path):
    folder = write_pydoc_beir(tmp_path / "beir", n=5)
    with (folder / "qrels" / "test.tsv").open("a") as handle:
        handle.write("q-assert\tdoc-nowhere\t1\n")
    task = build_task(LocalTaskConfig(name="R", type="retrieval", path=str(folder)))
    with pytest.raises(TaskFileError, match=r"test\.tsv:7: corpus-id 'doc-nowhere' is not in .*corpus\.jsonl"):
        task.load_data()


def test_beir_rows_are_checked_by_file_line(tmp_path):
    """Empty query text, a document with neither text nor title, and a repeated id: named by the line in the file
    (a blank line before the bad row must not shift the number)."""
    cases = {
        "queries.jsonl": ({"_id": "q-empty", "text": "  "}, r"queries\.jsonl:\d+: field 'text' has an invalid value"),
        "corpus.jsonl": ({"_id": "doc-empty", "title": "", "text": ""},
                         r"corpus\.jsonl:\d+: field 'text': empty, and no title"),
    }
    for name, (row, message) in cases.items():
        folder = write_pydoc_beir(tmp_path / name, n=5)
        lines = (folder / name).read_text().splitlines()
        (folder / name).write_text("\n".join(lines[:1] + [""] + lines[1:] + [json.dumps(row)]) + "\n")
        task = build_task(LocalTaskConfig(name="R", type="retrieval", path=str(folder)))
        with pytest.raises(TaskFileError, match=message.replace(r"\d+", str(len(lines) + 2))):
            task.load_data()
    folder = write_pydoc_beir(tmp_path / "dup", n=5)
    first = (folder / "corpus.jsonl").read_text().splitlines()[0]
    with (folder / "corpus.jsonl").open("a") as handle:
        handle.write("\n" + first + "\n")
    lines = len((folder / "corpus.jsonl").read_text().splitlines())
    task = build_task(LocalTaskConfig(name="R", type="retrieval", path=str(folder)))
    with pytest.raises(TaskFileError, match=rf"corpus\.jsonl:{lines}: field '_id': id .* appears twice"):
        task.load_data()


def test_tasks_file_and_model_dir_errors(tmp_path, tiny_encoder):
    from embedpipe.evaluation.run import evaluate
    from embedpipe.evaluation.tasks import read_tasks_file

    (tmp_path / "tasks.json").write_text(json.dumps([{"name": "X", "type": "sts"}]))
    with pytest.raises(TaskFileError, match=r"tasks\.json: task 0: path: Field required"):
        read_tasks_file(tmp_path)
    with pytest.raises(TaskFileError, match="has no tasks.json"):
        read_tasks_file(tmp_path / "nowhere")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(NotAnEncoderExport, match="not an embedpipe encoder export"):
        evaluate(tmp_path / "model", EvaluationConfig(), tmp_path / "out")
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(tiny_encoder, EvaluationConfig(), tmp_path / "out")


def test_named_benchmark_task_selection_offline():
    """Named benchmarks resolve offline (their metadata ships with mteb); their data needs the hub."""
    import mteb

    from embedpipe.evaluation.run import collect_tasks

    tasks = collect_tasks(EvaluationConfig(tasks=["STS12", "SciFact"]), None)
    assert [t.metadata.name for t in tasks] == ["STS12", "SciFact"]
    benchmark = mteb.get_benchmark("MTEB(Multilingual, v2)")
    assert len(benchmark.tasks) > 100
    assert {"Retrieval", "STS", "BitextMining", "Clustering"} <= {t.metadata.type for t in benchmark.tasks}


def test_task_groups_merged_equal_one_pod(tiny_encoder, tasks_dir, tmp_path):
    """Evaluation fanned out over 2 task groups (one pod each) and merged = the one-pod run: scores, means, files."""
    from embedpipe.evaluation.run import evaluate, merge_results

    config = EvaluationConfig(batch_size=16)
    one = evaluate(tiny_encoder, config, tmp_path / "one", extra_tasks_dir=tasks_dir, cache_dir=tmp_path / "e1",
                   model_name="tiny")
    groups = [evaluate(tiny_encoder, config, tmp_path / f"g{i}", extra_tasks_dir=tasks_dir,
                       cache_dir=tmp_path / f"e-g{i}", model_name="tiny", group=(i, 2)) for i in range(2)]
    assert all(g["scores"] for g in groups) and not set(groups[0]["scores"]) & set(groups[1]["scores"])
    merged = merge_results([tmp_path / "g0", tmp_path / "g1"], tmp_path / "merged", config)
    assert merged["scores"] == pytest.approx(one["scores"], abs=1e-6)
    assert merged["mean_task"] == pytest.approx(one["mean_task"], abs=1e-6)
    assert merged["mean_task_type"] == pytest.approx(one["mean_task_type"], abs=1e-6)
    files = lambda root: sorted(p.relative_to(root).as_posix() for p in (root / "results").rglob("*.json"))  # noqa: E731
    assert files(tmp_path / "merged") == files(tmp_path / "one")
    assert Path(merged["results_dir"]) == tmp_path / "merged" / Path(one["results_dir"]).relative_to(tmp_path / "one")
    with pytest.raises(ValueError, match="overlap"):
        merge_results([tmp_path / "g0", tmp_path / "g0"], tmp_path / "bad", config)
    with pytest.raises(ValueError, match=r"index must be in \[0, 2\)"):
        evaluate(tiny_encoder, config, tmp_path / "x", extra_tasks_dir=tasks_dir, model_name="tiny", group=(2, 2))


def test_dev_role_scores_the_dev_split_only(tiny_encoder, tmp_path):
    """``role="dev"`` scores a local task's dev split (its own qrels file) and never its test split; metrics are
    logged as ``dev_*``; a test-only task gives no dev task, and an mteb dev task naming a test split is refused."""
    import mlflow

    from embedpipe.evaluation.run import collect_tasks, evaluate

    folder = write_pydoc_beir(tmp_path / "tasks" / "pydoc", n=20)
    qrels = (folder / "qrels" / "test.tsv").read_text().splitlines()
    header, rows = qrels[0], qrels[1:]
    (folder / "qrels" / "test.tsv").write_text("\n".join([header, *rows[:12]]) + "\n")
    (folder / "qrels" / "dev.tsv").write_text("\n".join([header, *rows[12:]]) + "\n")
    write_tasks_file([{"name": "PydocRetrieval", "type": "retrieval", "path": "pydoc", "dev_split": "dev"},
                      {"name": "LocalSTS", "type": "sts", "path": "sts.jsonl"}], tmp_path / "tasks")
    write_jsonl(tmp_path / "tasks" / "sts.jsonl", [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in STS_PAIRS])
    config = EvaluationConfig(batch_size=16)
    dev_tasks = collect_tasks(config, tmp_path / "tasks", role="dev")
    assert [(t.metadata.name, t.metadata.eval_splits) for t in dev_tasks] == [("PydocRetrieval", ["dev"])]
    # dev_max_corpus: the dev task on its judged documents plus others up to the cap; the test task keeps them all
    from embedpipe.evaluation import tasks as task_module

    capped, caps = EvaluationConfig(batch_size=16, dev_max_corpus=12), {}
    real = task_module.build_task

    def build_task_seen(task, *args, max_corpus=None, **kwargs):
        caps[(task.name, task.split)] = max_corpus
        return real(task, *args, max_corpus=max_corpus, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(task_module, "build_task", build_task_seen)
        collect_tasks(capped, tmp_path / "tasks", role="dev")
        collect_tasks(capped, tmp_path / "tasks", role="test")
    assert caps[("PydocRetrieval", "dev")] == 12 and caps[("PydocRetrieval", "test")] is None
    dev_corpus = task_module.read_beir(folder, "dev", max_corpus=12)["corpus"]
    assert len(dev_corpus) == 12 and len(task_module.read_beir(folder, "test")["corpus"]) == 20
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        mlflow.set_experiment("dev-test")
        with mlflow.start_run() as run:
            dev = evaluate(tiny_encoder, config, tmp_path / "dev", extra_tasks_dir=tmp_path / "tasks",
                           cache_dir=tmp_path / "emb", model_name="tiny", role="dev")
            test = evaluate(tiny_encoder, config, tmp_path / "test", extra_tasks_dir=tmp_path / "tasks",
                            cache_dir=tmp_path / "emb", model_name="tiny")
        metrics = mlflow.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri("")
    assert dev["role"] == "dev" and set(dev["scores"]) == {"PydocRetrieval"}
    assert test["role"] == "test" and set(test["scores"]) == {"PydocRetrieval", "LocalSTS"}
    saved = json.loads((Path(dev["results_dir"]) / "PydocRetrieval.json").read_text())["scores"]
    assert list(saved) == ["dev"]
    assert saved["dev"][0]["main_score"] == pytest.approx(dev["scores"]["PydocRetrieval"])
    assert metrics["dev_mean_task"] == pytest.approx(dev["mean_task"])
    assert metrics["dev_PydocRetrieval"] == pytest.approx(dev["scores"]["PydocRetrieval"])
    assert metrics["test_PydocRetrieval"] == pytest.approx(test["scores"]["PydocRetrieval"])
    assert metrics["eval.mean_task"] == pytest.approx(test["mean_task"])
    with pytest.raises(ValueError, match="no dev tasks"):
        collect_tasks(EvaluationConfig(local_tasks=[LocalTaskConfig(name="S", type="sts",
                                                                    path=str(tmp_path / "tasks" / "sts.jsonl"))]),
                      None, role="dev")
    with pytest.raises(ValueError, match="dev task"):
        EvaluationConfig(dev_tasks=["XNLI:"])


def test_mteb_dev_tasks_exclude_what_the_test_tasks_score():
    """A benchmark scores some tasks' validation splits too: naming one as a dev task is refused; a split of a task
    outside the benchmark is taken, restricted to that split (task metadata only, nothing downloaded)."""
    from embedpipe.evaluation.run import collect_tasks

    config = EvaluationConfig(benchmark="MTEB(Multilingual, v2)", dev_tasks=["MTOPDomainClassification:validation"])
    [task] = collect_tasks(config, None, role="dev")
    assert task.metadata.name == "MTOPDomainClassification" and task.eval_splits == ["validation"]
    with pytest.raises(ValueError, match="XNLI split 'validation' is scored by the test tasks"):
        collect_tasks(config.model_copy(update={"dev_tasks": ["XNLI:validation"]}), None, role="dev")
    with pytest.raises(ValueError, match="has no split 'dev'"):
        collect_tasks(EvaluationConfig(dev_tasks=["XNLI"]), None, role="dev")
