"""Synthetic data generation: templates, robust parsing, the generator mix, cross-model generation, filters, resume,
and each backend: OpenAI-compatible (a real HTTP server on 127.0.0.1), vLLM (up to the engine), transformers (SmolLM2).
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import yaml

from embedpipe.data.schema import Record, read_records
from embedpipe.data.sdg import (
    Rejected,
    consistency_filter,
    generate_synthetic,
    parse_output,
    parse_task_list,
    plan,
    render,
    synthetic_source,
)
from embedpipe.recipe import load_recipe
from scripted_llm import llm_server  # noqa: F401 - the fixture

CORPUS = [
    ("c0", "The while statement repeats a block of code as long as its condition stays true."),
    ("c1", "A dictionary maps hashable keys to arbitrary values and supports fast lookup by key."),
    ("c2", "The import statement finds a module, loads and initialises it, and binds a name to it."),
    ("c3", "Exceptions are raised with the raise statement and handled with try and except clauses."),
    ("c4", "A generator function uses yield to produce a sequence of values lazily, one at a time."),
    ("c5", "String formatting with f-strings evaluates expressions inside braces at run time."),
]


def _corpus_file(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in CORPUS) + "\n")
    return path


def _generate(recipe, *args, **kwargs):
    """SDG by the recipe's sdg section, its records named after the data section's synthetic source."""
    return generate_synthetic(recipe.sdg, *args, source=synthetic_source(recipe.data), **kwargs)


def _recipe(tmp_path, sdg: dict, name="r"):
    tree = {"name": name, "model": {"base": "smollm2-135m-instruct"},
            "data": {"sources": [{"name": "synthetic", "kind": "synthetic", "instruction": "Find the doc"}]},
            "sdg": sdg}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_recipe(path)


# ------------------------------------------------------------------------------------------- templates and parsing


def test_templates_render_every_task_with_the_target_language():
    common = {"language": "de", "language_name": "German", "topic": "law", "n_tasks": 5}
    assert "German" in render("query_generation", document="Ein Text.", **common)
    assert "German" in render("retrieval_triplet", task="Find laws", query_type="common", query_length="short",
                              clarity="clear", num_words=50, **common)
    assert "law" in render("brainstorm_retrieval", **common) and "law" in render("brainstorm_classification", **common)
    assert "German" in render("classification", task="Classify reviews", num_words="10", **common)
    assert "German" in render("sts", unit="sentence", high_score=4, low_score=2, difficulty="college", **common)
    text = render("bitext", unit="sentence", source_language_name="English", difficulty="college", **common)
    assert "English" in text and "German" in text
    with pytest.raises(Exception, match="document"):
        render("query_generation", language_name="German")  # a missing parameter is an error, not a blank


@pytest.mark.parametrize("task,text,expected", [
    ("query_generation", "What does the while statement do?", {"query": "What does the while statement do?"}),
    ("query_generation", '**Query:** "How are keys hashed in a dict?"\nExtra chatter', {"query": "How are keys hashed in a dict?"}),
    ("query_generation", 'Sure! {"query": "how do imports bind names"}', {"query": "how do imports bind names"}),
    ("retrieval_triplet", 'Here you go:\n```json\n{"user_query": "q", "positive_document": "p", "hard_negative_document": "n"}\n```',
     {"query": "q", "positive": "p", "negative": "n"}),
    ("classification", '{"input_text": "great film", "label": "positive", "misleading_label": "neutral"}',
     {"query": "great film", "positive": "positive", "negative": "neutral"}),
    ("sts", '{"S1": "a", "S2": "b", "S3": "c"}', {"query": "a", "positive": "b", "negative": "c"}),
    ("bitext", '{"S1": "Hello", "S2": "Hallo"}', {"query": "Hello", "positive": "Hallo"}),
])
def test_parse_good_outputs(task, text, expected):
    assert parse_output(task, text) == expected


@pytest.mark.parametrize("task,text,reason", [
    ("query_generation", "", "empty_output"),
    ("query_generation", "   \n  ", "empty_output"),
    ("query_generation", "Yes.", "too_short"),
    ("retrieval_triplet", "I cannot help with that.", "malformed_json"),
    ("retrieval_triplet", '{"user_query": "q", "positive_document": "p"', "malformed_json"),
    ("retrieval_triplet", '{"user_query": "q", "positive_document": "p"}', "missing_field"),
    ("classification", '{"input_text": "t", "label": "Sports", "misleading_label": "sports"}', "inconsistent"),
    ("sts", '["S1", "S2"]', "malformed_json"),
])
def test_parse_rejects_malformed_outputs_with_a_reason(task, text, reason):
    with pytest.raises(Rejected) as info:
        parse_output(task, text)
    assert info.value.reason == reason


def test_parse_task_lists():
    assert parse_task_list('["Retrieve recipes for a dish", "Find laws about tenancy"]') == [
        "Retrieve recipes for a dish", "Find laws about tenancy"]
    assert parse_task_list("Tasks:\n1. Retrieve news articles about a company\n- Find papers that cite a claim") == [
        "Retrieve news articles about a company", "Find papers that cite a claim"]
    with pytest.raises(Rejected):
        parse_task_list("no list here")


def test_plan_is_deterministic_and_splits_shards_by_share(tmp_path):
    recipe = _recipe(tmp_path, {"tasks": ["query_generation", "sts"], "languages": ["en", "de"], "records_per_task": 40,
                                "shard_size": 5, "generators": [
                                    {"name": "big", "backend": "openai", "model": "m1", "base_url": "http://x", "share": 3},
                                    {"name": "small", "backend": "openai", "model": "m2", "base_url": "http://x", "share": 1}]})
    shards = plan(recipe.sdg, CORPUS)
    again = plan(recipe.sdg, CORPUS)
    assert [(s.name, s.generator, [i.id for i in s.items]) for s in shards] == \
        [(s.name, s.generator, [i.id for i in s.items]) for s in again]
    assert len(shards) == 16
    for task in ("query_generation", "sts"):
        owners = [s.generator for s in shards if s.task == task]
        assert owners.count("big") == 6 and owners.count("small") == 2
    langs = [i.language for s in shards for i in s.items if s.task == "sts"]
    assert langs.count("de") == langs.count("en") == 20
    docs = [i.doc_id for s in shards for i in s.items if s.task == "query_generation"]
    assert set(docs) == {d for d, _ in CORPUS}


def test_consistency_filter_keeps_queries_that_find_their_document():
    records = [
        Record(id="good", query="How do I handle exceptions with try and except?", positives=[CORPUS[3][1]]),
        Record(id="bad", query="What is the capital city of France?", positives=[CORPUS[0][1]]),
        Record(id="sts", query="A man plays guitar", positives=["Someone plays a guitar"], task_type="sts"),
    ]
    kept, stats = consistency_filter(records, CORPUS, "all-minilm-l6-v2", top_k=1)
    assert [r.id for r in kept] == ["good", "sts"]
    assert stats["checked"] == 2 and stats["failed"] == 1


# ------------------------------------------------------------------------------------ OpenAI-compatible HTTP server


def _openai_sdg(server, **overrides):
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    sdg = {"tasks": ["query_generation"], "records_per_task": 12, "shard_size": 4, "consistency_top_k": 3,
           "generators": [{"name": "llm-a", "backend": "openai", "model": "model-a", "base_url": url, "share": 1.0,
                           "max_retries": 0, "temperature": 0.5, "max_new_tokens": 64},
                          {"name": "llm-b", "backend": "openai", "model": "model-b", "base_url": url, "share": 1.0,
                           "max_retries": 0}]}
    sdg.update(overrides)
    return sdg


def test_openai_backend_mix_and_malformed_counts(tmp_path, llm_server):
    recipe = _recipe(tmp_path, _openai_sdg(llm_server))
    summary = _generate(recipe, _corpus_file(tmp_path), tmp_path / "out")
    assert summary["complete"] and summary["generated"] == 12
    assert summary["parsed"] + sum(summary["rejected"].values()) == 12  # every generation accounted for
    assert summary["rejected"].get("empty_output", 0) >= 2  # the scripted model's malformed answers
    records = read_records(tmp_path / "out" / "synthetic.jsonl")
    assert len(records) == summary["records"] > 0
    assert {r.generator for r in records} <= {"llm-a", "llm-b"}
    models = [req["model"] for req in llm_server.requests]
    assert sorted([models.count("model-a"), models.count("model-b")]) == [4, 8]  # 3 shards over equal shares
    first = llm_server.requests[0]
    assert first["stop"] == ["\n"] and "seed" in first
    for record in records:
        assert record.positive_ids[0] in dict(CORPUS) and record.positives == [dict(CORPUS)[record.positive_ids[0]]]
        assert record.instruction == "Find the doc" and record.source == "synthetic"


def test_cross_model_two_step_generation_for_every_task(tmp_path, llm_server):
    sdg = _openai_sdg(llm_server, tasks=["retrieval_triplet", "sts", "bitext"], languages=["en", "fr"],
                      records_per_task=6, shard_size=3, second_step_generator="llm-b")
    sdg["generators"] = sdg["generators"][:1] + [dict(sdg["generators"][1], share=0.001)]
    recipe = _recipe(tmp_path, sdg)
    summary = _generate(recipe, _corpus_file(tmp_path), tmp_path / "out")
    records = read_records(tmp_path / "out" / "synthetic.jsonl")
    triplets = [r for r in records if r.id.startswith("synthetic-retrieval_triplet")]
    assert triplets and all(r.generator == "llm-a>llm-b" for r in triplets)
    assert all(r.negatives and r.instruction and r.instruction.startswith(("Retrieve", "Find")) for r in triplets)
    by_prompt = {("Brainstorm" in q["messages"][0]["content"], q["model"]) for q in llm_server.requests
                 if "retrieval" in q["messages"][0]["content"]}
    assert by_prompt == {(True, "model-a"), (False, "model-b")}  # step one by one model, step two by another
    assert {r.task_type for r in records} == {"retrieval", "sts", "bitext"}
    assert {r.language for r in records if r.task_type == "sts"} == {"en", "fr"}
    assert summary["by_task"]["bitext"] > 0
    assert summary["items"] == 18 == summary["parsed"] + sum(summary["rejected"].values())


def test_interrupted_run_resumes_and_gives_the_same_records(tmp_path, llm_server):
    from openai import APIError

    recipe = _recipe(tmp_path, _openai_sdg(llm_server, consistency_top_k=None))
    corpus = _corpus_file(tmp_path)
    reference = _generate(recipe, corpus, tmp_path / "reference")
    llm_server.requests.clear()
    llm_server.fail_after = 6  # the server dies during the second shard
    with pytest.raises(APIError):
        _generate(recipe, corpus, tmp_path / "run")
    shards = sorted(p.name for p in (tmp_path / "run" / "shards").glob("*.json"))
    assert shards == ["query_generation-00000.json"] and not (tmp_path / "run" / "synthetic.jsonl").exists()
    llm_server.fail_after = None
    llm_server.requests.clear()
    partial = _generate(recipe, corpus, tmp_path / "run", max_shards=1)
    assert not partial["complete"] and partial["shards_skipped"] == 1 and partial["shards_generated"] == 1
    resumed = _generate(recipe, corpus, tmp_path / "run")
    assert resumed["complete"] and resumed["shards_skipped"] == 2 and resumed["shards_generated"] == 1
    assert len(llm_server.requests) == 8  # only the unfinished shards were generated again
    assert (tmp_path / "run" / "synthetic.jsonl").read_text() == (tmp_path / "reference" / "synthetic.jsonl").read_text()
    assert resumed["records"] == reference["records"]


# ------------------------------------------------------------------------------------------------------------ vLLM


def test_vllm_backend_up_to_the_engine(tmp_path, monkeypatch):
    """The offline engine gets the model, tensor parallelism and per-shard seeded sampling parameters."""
    calls = {"engines": [], "params": [], "chats": []}

    class SamplingParams:
        def __init__(self, **kwargs):
            calls["params"].append(kwargs)

    class LLM:
        def __init__(self, **kwargs):
            calls["engines"].append(kwargs)

        def chat(self, conversations, params, use_tqdm=True):
            calls["chats"].append(conversations)
            base = sum(len(c) for c in calls["chats"][:-1])
            answers = [json.dumps({"S1": f"A cat sits on mat {base + i}.", "S2": f"A cat is sitting on mat {base + i}.",
                                   "S3": "Dogs bark."}) for i in range(len(conversations))]
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=a)]) for a in answers]

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    recipe = _recipe(tmp_path, {"tasks": ["sts"], "records_per_task": 4, "shard_size": 2, "consistency_top_k": None,
                                "generators": [{"name": "mixtral", "backend": "vllm", "model": "org/Mixtral",
                                                "tensor_parallel_size": 8, "temperature": 0.9, "max_new_tokens": 300}]})
    summary = _generate(recipe, None, tmp_path / "out")
    assert calls["engines"] == [{"model": "org/Mixtral", "tensor_parallel_size": 8, "seed": 0, "trust_remote_code": False}]
    assert len(calls["params"]) == 2 and {p["max_tokens"] for p in calls["params"]} == {300}
    assert len({p["seed"] for p in calls["params"]}) == 2  # each shard has its own seed
    assert calls["chats"][0][0][0]["role"] == "user"
    assert summary["records"] == 4 and summary["by_generator"] == {"mixtral": 4}


def test_vllm_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    recipe = _recipe(tmp_path, {"tasks": ["sts"], "records_per_task": 1, "generators": [
        {"name": "g", "backend": "vllm", "model": "m"}]})
    with pytest.raises(RuntimeError, match="needs the vllm package"):
        _generate(recipe, None, tmp_path / "out")


# ---------------------------------------------------------------------------------------------------- transformers


@pytest.mark.slow
def test_transformers_backend_with_smollm2_gives_parseable_records(tmp_path, smollm2_base):
    recipe = _recipe(tmp_path, {"tasks": ["query_generation"], "records_per_task": 4, "shard_size": 4,
                                "consistency_top_k": None, "max_prompt_document_chars": 300,
                                "generators": [{"name": "smollm2", "backend": "transformers",
                                                "model": "smollm2-135m-instruct", "temperature": 0.2,
                                                "max_new_tokens": 32, "threads": 1}]})
    summary = _generate(recipe, _corpus_file(tmp_path), tmp_path / "out")
    assert summary["generated"] == 4
    assert summary["parsed"] >= 2, summary
    records = read_records(tmp_path / "out" / "synthetic.jsonl")
    assert records and all(r.generator == "smollm2" and len(r.query.split()) >= 3 for r in records)
    assert all("\n" not in r.query for r in records)  # generation stopped at the end of the line


def test_classification_records_get_the_other_label_names_after_the_misleading_label():
    from embedpipe.data.sdg import add_other_labels

    def rec(i, label, misleading, task="Classify reviews by sentiment", lang="en"):
        return Record(id=f"c{i}", task_type="classification", instruction=task, query=f"text {i}",
                      positives=[label], negatives=[misleading], language=lang)

    records = [rec(0, "positive", "neutral"), rec(1, "negative", "positive"), rec(2, "spam", "ham", task="Spam?"),
               rec(3, "oui", "non", task="Avis ?", lang="fr"), Record(id="r", query="q", positives=["p"])]
    out, added = add_other_labels(records, limit=4)
    by_id = {r.id: r.negatives for r in out}
    assert by_id["c0"] == ["neutral", "negative", "spam", "ham"]  # own task's labels first, then the language's
    assert by_id["c1"] == ["positive", "neutral", "spam", "ham"]
    assert by_id["c2"] == ["ham", "positive", "neutral", "negative"]
    assert by_id["c3"] == ["non"] and by_id["r"] == []  # no other French labels; not a classification record
    assert added == 9
