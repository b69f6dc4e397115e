"""SDG at cluster scale without GPUs: gpt-oss harmony answers, per-template token budgets, one task per generator
(engines closed when done) whose shards the filter step combines into what one process writes."""

from __future__ import annotations

import json
import sys
import types

import pytest
import yaml

from embedpipe.data.config import GeneratorConfig
from embedpipe.data.generators import HarmonyError, VLLMGenerator, answers, budget, harmony_final
from embedpipe.data.sdg import generate_synthetic, token_budget
from embedpipe.recipe import load_recipe

# gpt-oss completions as vLLM returns them with skip_special_tokens=False (harmony response format)
HARMONY_FULL = ('<|channel|>analysis<|message|>The user wants a JSON with S1, S2, S3. S2 close to S1, S3 far. '
                'Let me write {"S1": "draft"} first... no, final answer only.<|end|>'
                '<|start|>assistant<|channel|>final<|message|>{"S1": "A cat sleeps on the warm mat.", '
                '"S2": "On the warm mat a cat is sleeping.", "S3": "Stock prices fell sharply today."}<|return|>')
HARMONY_CONSTRAINED = ('<|channel|>analysis<|message|>Need a query.<|end|><|start|>assistant<|channel|>final '
                       '<|constrain|>json<|message|>{"query": "how do python imports bind names"}<|end|>')
HARMONY_FLAT = ('analysisWe must output JSON only. Use {"S1": "wrong"} as a scratch.assistantfinal'
                '{"S1": "Rain is falling.", "S2": "It is raining.", "S3": "The car is red."}')
HARMONY_CUT = '<|channel|>analysis<|message|>The user wants three sentences. Let me think about topics such as'


def test_harmony_keeps_the_final_channel_only():
    assert json.loads(harmony_final(HARMONY_FULL))["S3"] == "Stock prices fell sharply today."
    assert json.loads(harmony_final(HARMONY_CONSTRAINED)) == {"query": "how do python imports bind names"}
    assert json.loads(harmony_final(HARMONY_FLAT))["S1"] == "Rain is falling."  # special tokens skipped
    assert harmony_final('{"S1": "plain"}') == '{"S1": "plain"}'  # a server's reasoning parser already split it
    for cut in (HARMONY_CUT, "analysisThe user wants three sentences"):
        with pytest.raises(HarmonyError, match="no final channel"):
            harmony_final(cut)
    gpt_oss = GeneratorConfig(name="g", backend="vllm", model="openai/gpt-oss-120b")
    assert answers(gpt_oss, [HARMONY_FULL, HARMONY_CUT])[1] == ""  # counted as an empty output, not parsed
    plain = GeneratorConfig(name="m", backend="vllm", model="org/Mixtral")
    assert answers(plain, [HARMONY_FLAT]) == [HARMONY_FLAT]
    assert VLLMGenerator(gpt_oss).sampling_kwargs(1)["skip_special_tokens"] is False
    assert "skip_special_tokens" not in VLLMGenerator(plain).sampling_kwargs(1)


def test_token_budgets_fit_their_templates():
    # two documents of at least 200 words (+ a query + JSON): far more than the old flat 256
    assert token_budget("retrieval_triplet", {"num_words": 200}) >= 2 * 200 * 1.5 + 100
    assert token_budget("retrieval_triplet", {"num_words": 50}) < token_budget("retrieval_triplet", {"num_words": 200})
    assert token_budget("classification", {"num_words": "at least 50"}) >= 150
    assert token_budget("sts", {"unit": "short paragraph"}) > token_budget("sts", {"unit": "sentence"})
    assert token_budget("query_generation", {}) == 64
    assert token_budget("brainstorm_retrieval", {"n_tasks": 8}) >= 8 * 20
    with pytest.raises(ValueError, match="no token budget"):
        token_budget("poem", {})
    # the generator caps the call's budget and adds reasoning room
    assert budget(GeneratorConfig(name="a", backend="vllm", model="m"), 900) == 900
    assert budget(GeneratorConfig(name="a", backend="vllm", model="m", max_new_tokens=48), 900) == 48
    assert budget(GeneratorConfig(name="a", backend="vllm", model="m", reasoning_tokens=512), 900) == 1412


def _fake_vllm(monkeypatch, calls):
    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            calls["params"].append(kwargs)

    class Engine:
        def shutdown(self):
            calls["events"].append(("shutdown", self.model))

    class LLM:
        def __init__(self, **kwargs):
            self.model = kwargs["model"]
            self.llm_engine = Engine()
            self.llm_engine.model = self.model
            calls["events"].append(("start", self.model))
            live = [m for e, m in calls["events"] if e == "start"]
            gone = [m for e, m in calls["events"] if e == "shutdown"]
            calls["max_live"] = max(calls.get("max_live", 0), len(live) - len(gone))

        def chat(self, conversations, params, use_tqdm=True):
            out = []
            for conv in conversations:
                key = abs(hash(conv[0]["content"])) % 10**6
                body = json.dumps({"S1": f"A cat sits on mat {key}.", "S2": f"A cat is sitting on mat {key}.",
                                   "S3": "Dogs bark loudly."})
                text = (f"<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>{body}"
                        if "gpt-oss" in self.model else body)
                out.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text)]))
            return out

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)


def _recipe(tmp_path, name="r"):
    tree = {"name": name, "model": {"base": "smollm2-135m-instruct"},
            "sdg": {"tasks": ["sts"], "records_per_task": 8, "shard_size": 2, "consistency_top_k": None,
                    "generators": [{"name": "gpt-oss", "backend": "vllm", "model": "openai/gpt-oss-20b"},
                                   {"name": "mixtral", "backend": "vllm", "model": "org/Mixtral",
                                    "tensor_parallel_size": 8}]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_recipe(path)


def test_one_task_per_generator_then_the_filter_step_equals_one_process(tmp_path, monkeypatch):
    calls = {"params": [], "events": []}
    _fake_vllm(monkeypatch, calls)
    recipe = _recipe(tmp_path)
    one = generate_synthetic(recipe.sdg, None, tmp_path / "one")
    assert one["records"] == 8 and set(one["by_generator"]) == {"gpt-oss", "mixtral"}
    # engines ran one after the other, each shut down after its last shard
    assert [e for e, _ in calls["events"]] == ["start", "shutdown", "start", "shutdown"] and calls["max_live"] == 1
    budgets = {p["max_tokens"] for p in calls["params"]}
    assert budgets and all(b >= token_budget("sts", {"unit": "sentence"}) for b in budgets)

    store = tmp_path / "store"
    parts = [generate_synthetic(recipe.sdg, None, tmp_path / g, only_generator=g, shard_store=store)
             for g in ("mixtral", "gpt-oss")]
    assert sum(p["shards"] for p in parts) == one["shards"] and not (tmp_path / "mixtral" / "synthetic.jsonl").exists()
    combined = generate_synthetic(recipe.sdg, None, tmp_path / "filtered", generate=False, shard_store=store)
    assert combined["shards_generated"] == 0 and combined["records"] == one["records"]
    assert sorted((tmp_path / "filtered" / "synthetic.jsonl").read_text().splitlines()) == \
        sorted((tmp_path / "one" / "synthetic.jsonl").read_text().splitlines())


def test_filter_step_names_the_missing_shards(tmp_path, monkeypatch):
    _fake_vllm(monkeypatch, {"params": [], "events": []})
    recipe = _recipe(tmp_path)
    store = tmp_path / "store"
    generate_synthetic(recipe.sdg, None, tmp_path / "a", only_generator="mixtral", shard_store=store)
    with pytest.raises(RuntimeError, match=r"lacks \d+ of 4 shards: .*\(gpt-oss\)"):
        generate_synthetic(recipe.sdg, None, tmp_path / "f", generate=False, shard_store=store)
    with pytest.raises(ValueError, match="not in sdg.generators"):
        generate_synthetic(recipe.sdg, None, tmp_path / "b", only_generator="nope", shard_store=store)
