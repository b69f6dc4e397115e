"""Synthetic data generation (SDG) with a mix of LLMs: prompts -> parsed records -> filters -> ``synthetic.jsonl``.

Tasks (Jinja templates in ``templates/``): ``query_generation`` (seed-corpus document -> query), ``retrieval_triplet``
(E5-style, two steps: brainstorm retrieval tasks, then query + positive + hard negative), ``classification`` (two steps:
brainstorm tasks, then text + label + misleading label), ``sts`` (S1/S2/S3 with high and low similarity) and
``bitext`` (a sentence and its translation). The target language is a template parameter.

The work is planned up front as numbered items, grouped into shards; each shard goes to one generator of the mix
(by the generators' shares) and is written, as soon as it is done, to the shard store (a local folder or an s3://
prefix: see :class:`ShardStore`). A restarted run skips the shards that exist and, because every shard's sampling is
seeded from (recipe seed, task, shard), produces the same records. Shards run generator by generator, and each
generator's engine is closed after its last shard; with ``only_generator`` a process (one pipeline task, with the
GPUs its tensor-parallel degree needs) runs one generator's shards only, and a last call with ``generate=False``
filters the union. Every call asks for the new tokens its template needs (:func:`token_budget`).
Malformed model output is rejected and counted per reason; filters then dedupe, bound lengths and keep only records
whose generated query ranks the positive in the teacher embedder's top-k (the consistency filter).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from embedpipe import tracking
from embedpipe.data.config import DataConfig, GeneratorConfig, SDGConfig
from embedpipe.data.decontaminate import normalise
from embedpipe.data.schema import Record, kind_of, read_jsonl, write_records

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
TWO_STEP = {"retrieval_triplet": "brainstorm_retrieval", "classification": "brainstorm_classification"}
TASK_TYPE_OF = {"query_generation": "retrieval", "retrieval_triplet": "retrieval", "classification": "classification",
                "sts": "sts", "bitext": "bitext"}
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
             "nl": "Dutch", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "ru": "Russian", "ar": "Arabic",
             "hi": "Hindi", "bn": "Bengali", "fa": "Persian", "fi": "Finnish", "id": "Indonesian", "sw": "Swahili",
             "te": "Telugu", "th": "Thai", "yo": "Yoruba", "tr": "Turkish", "pl": "Polish", "vi": "Vietnamese"}
STOP = {"query_generation": ["\n"]}  # a query is one line: stop there instead of paying for max_new_tokens
TOPICS = ["science", "health", "programming", "history", "finance", "law", "travel", "sports", "cooking",
          "education", "technology", "music", "environment", "politics", "shopping", "mathematics"]


def language_name(code: str) -> str:
    return LANGUAGES.get(code.lower(), code)


_env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, keep_trailing_newline=False,
                   autoescape=False)


def render(template: str, **params: Any) -> str:
    """Render ``templates/<template>.j2`` (missing parameters are errors, not blanks)."""
    return _env.get_template(f"{template}.j2").render(**params).strip()


# --------------------------------------------------------------------------------------------------------- parsing


class Rejected(ValueError):
    """A generation that cannot become a record; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str, kind: type = dict) -> Any:
    """The first JSON value of type ``kind`` in a model's output (code fences and chatter around it are tolerated)."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    opener = "{" if kind is dict else "["
    for candidate in candidates:
        for match in re.finditer(re.escape(opener), candidate):
            try:
                value, _ = decoder.raw_decode(candidate[match.start():])
            except json.JSONDecodeError:
                continue
            if isinstance(value, kind):
                return value
    raise Rejected("malformed_json", text[:80])


def _field(obj: dict, *names: str) -> str:
    for name in names:
        for key, value in obj.items():
            if key.strip().lower() == name.lower() and isinstance(value, str) and value.strip():
                return value.strip()
    raise Rejected("missing_field", f"{names[0]} not in {list(obj)[:5]}")


def parse_query(text: str) -> str:
    """A generated query: a JSON ``{"query": ...}`` or the first meaningful line, prefixes and quotes stripped."""
    try:
        return _field(extract_json(text), "query", "question", "user_query")
    except Rejected:
        pass
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(?:[-*\d.)\s]+)?(?:\*\*)?(?:query|question|q)\s*[:：]\s*(?:\*\*)?", "", line, flags=re.I)
        line = line.strip().strip('"“”\'`*').strip()
        if line:
            if len(re.findall(r"\w+", line)) < 3:
                raise Rejected("too_short", line)
            return line
    raise Rejected("empty_output")


def parse_task_list(text: str) -> list[str]:
    """Brainstormed tasks: a JSON list of strings, or a bulleted/numbered list."""
    try:
        items = [str(x).strip() for x in extract_json(text, list) if isinstance(x, (str, int, float)) and str(x).strip()]
    except Rejected:
        items = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip('"')
                 for line in text.splitlines() if re.match(r"^\s*(?:[-*•]|\d+[.)])\s+\S", line)]
    items = [i for i in items if len(i.split()) >= 3]
    if not items:
        raise Rejected("malformed_task_list", text[:80])
    return items


def parse_output(task: str, text: str) -> dict[str, Any]:
    """Model output -> the fields of one example of ``task`` (raises :class:`Rejected`)."""
    if not text or not text.strip():
        raise Rejected("empty_output")
    if task == "query_generation":
        return {"query": parse_query(text)}
    obj = extract_json(text)
    if task == "retrieval_triplet":
        return {"query": _field(obj, "user_query", "query"), "positive": _field(obj, "positive_document", "positive"),
                "negative": _field(obj, "hard_negative_document", "negative")}
    if task == "classification":
        out = {"query": _field(obj, "input_text", "text"), "positive": _field(obj, "label"),
               "negative": _field(obj, "misleading_label")}
        if normalise(out["positive"]) == normalise(out["negative"]):
            raise Rejected("inconsistent", "label equals misleading label")
        return out
    if task == "sts":
        return {"query": _field(obj, "S1"), "positive": _field(obj, "S2"), "negative": _field(obj, "S3")}
    if task == "bitext":
        return {"query": _field(obj, "S1"), "positive": _field(obj, "S2")}
    raise ValueError(f"unknown SDG task {task!r}")


# -------------------------------------------------------------------------------------------------------- planning


@dataclass
class Item:
    """One example to generate."""

    id: str
    task: str
    language: str
    params: dict[str, Any]
    doc_id: str | None = None
    document: str | None = None


@dataclass
class Shard:
    task: str
    index: int
    generator: str
    items: list[Item]

    @property
    def name(self) -> str:
        return f"{self.task}-{self.index:05d}"

    def seed(self, base: int) -> int:
        return int(hashlib.sha1(f"{base}:{self.name}".encode()).hexdigest(), 16) % (2**31)


def assign_generators(n_shards: int, generators: list[GeneratorConfig], rng: random.Random) -> list[str]:
    """Shard -> generator name, in proportion to the shares (largest remainder), in a seeded order."""
    total = sum(g.share for g in generators)
    exact = [n_shards * g.share / total for g in generators]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(generators)), key=lambda i: exact[i] - counts[i], reverse=True)[: n_shards - sum(counts)]:
        counts[i] += 1
    names = [g.name for g, c in zip(generators, counts) for _ in range(c)]
    rng.shuffle(names)
    return names


def plan(config: SDGConfig, corpus: list[tuple[str, str]]) -> list[Shard]:
    """Every item of every task, grouped into shards with their generator; a pure function of the config + corpus."""
    if not config.generators:
        raise ValueError("sdg.generators is empty: name at least one generator")
    shards: list[Shard] = []
    for task in config.tasks:
        rng = random.Random(f"{config.seed}:{task}")
        if task == "query_generation" and not corpus:
            raise ValueError("query_generation needs a seed corpus with at least one document")
        docs = rng.sample(corpus, len(corpus)) if task == "query_generation" else []
        items: list[Item] = []
        for i in range(config.records_per_task):
            lang = config.languages[i % len(config.languages)]
            params: dict[str, Any] = {"language": lang, "language_name": language_name(lang)}
            item = Item(id=f"{task}-{i:06d}", task=task, language=lang, params=params)
            if task == "query_generation":
                item.doc_id, item.document = docs[i % len(docs)]
                params["document"] = item.document[: config.max_prompt_document_chars]
            elif task == "retrieval_triplet":
                params.update(topic=rng.choice(TOPICS), n_tasks=config.brainstorm_tasks,
                              query_type=rng.choice(["extremely long-tail", "long-tail", "common"]),
                              query_length=rng.choice(["less than 5 words", "5 to 15 words", "at least 10 words"]),
                              clarity=rng.choice(["clear", "understandable with some effort", "ambiguous"]),
                              num_words=rng.choice([50, 100, 200]))
            elif task == "classification":
                params.update(topic=rng.choice(TOPICS), n_tasks=config.brainstorm_tasks,
                              num_words=rng.choice(["less than 10", "at least 10", "at least 50"]))
            elif task == "sts":
                params.update(unit=rng.choice(["sentence", "short paragraph"]), high_score=rng.choice([4, 4.5, 5]),
                              low_score=rng.choice([1.5, 2, 2.5]), difficulty=rng.choice(["elementary school", "high school", "college"]))
            elif task == "bitext":
                source = "en" if lang != "en" else next((l for l in config.languages if l != "en"), "fr")
                params.update(unit=rng.choice(["sentence", "short phrase"]), topic=rng.choice(TOPICS),
                              source_language=source, source_language_name=language_name(source),
                              difficulty=rng.choice(["elementary school", "high school", "college"]))
            items.append(item)
        chunks = [items[i:i + config.shard_size] for i in range(0, len(items), config.shard_size)]
        owners = assign_generators(len(chunks), config.generators, rng)
        shards += [Shard(task, k, owner, chunk) for k, (chunk, owner) in enumerate(zip(chunks, owners))]
    return shards


# ---------------------------------------------------------------------------------------------------- token budgets

TOKENS_PER_WORD = 2  # headroom for multilingual text: CJK / Indic scripts take more tokens per word than English
_UNIT_WORDS = {"sentence": 40, "short phrase": 12, "short paragraph": 120}


def _words(value: Any, default: int) -> int:
    found = re.findall(r"\d+", str(value))
    return int(found[-1]) if found else default


def token_budget(template: str, params: dict[str, Any]) -> int:
    """New tokens one generation of ``template`` with ``params`` needs: what the prompt asks for, in tokens, plus the
    JSON around it, rounded up to a multiple of 32 (the generator's own ``max_new_tokens`` may cap it)."""
    if template == "query_generation":
        need = 64
    elif template in ("brainstorm_retrieval", "brainstorm_classification"):
        need = int(params.get("n_tasks", 8)) * 24 * TOKENS_PER_WORD // 2 + 64  # ~24-token task lines, JSON list
    elif template == "retrieval_triplet":  # a query and two documents of at least num_words words
        need = 2 * _words(params.get("num_words"), 200) * TOKENS_PER_WORD + 30 * TOKENS_PER_WORD + 64
    elif template == "classification":  # "at least 50" words: room for twice that
        need = 2 * max(_words(params.get("num_words"), 50), 10) * TOKENS_PER_WORD + 96
    elif template == "sts":  # three units
        need = 3 * _UNIT_WORDS.get(str(params.get("unit")), 120) * TOKENS_PER_WORD + 64
    elif template == "bitext":  # a unit and its translation
        need = 2 * _UNIT_WORDS.get(str(params.get("unit")), 40) * TOKENS_PER_WORD + 48
    else:
        raise ValueError(f"no token budget for SDG template {template!r}")
    return -(-need // 32) * 32


def call_budget(template: str, items: list[Item]) -> int:
    """The budget of one batched call: the largest of its items' (a batch shares one sampling setting)."""
    return max((token_budget(template, it.params) for it in items), default=64)


# ------------------------------------------------------------------------------------------------------ generation


def _check_length(values: list[str], config: SDGConfig) -> None:
    for value in values:
        if len(value) < config.min_chars:
            raise Rejected("too_short", value)
        if len(value) > config.max_chars:
            raise Rejected("too_long", value[:40])


def _generate(generator, prompts: list[str], seed: int, stop: list[str] | None, shard: Shard,
              max_new_tokens: int | None = None) -> list[str]:
    """One backend call; a backend that loses or invents outputs is a bug to stop on, not data to count."""
    outputs = generator.generate(prompts, seed, stop=stop, max_new_tokens=max_new_tokens)
    if len(outputs) != len(prompts):
        raise RuntimeError(f"generator {generator.name!r} returned {len(outputs)} outputs for {len(prompts)} prompts "
                           f"in shard {shard.name}")
    return outputs


def run_shard(shard: Shard, generators: dict[str, Any], config: SDGConfig, source_name: str,
              instruction: str | None) -> dict:
    """Generate, parse and length-check one shard; returns {"records", "stats", "rejected_examples"}."""
    stats: Counter = Counter()
    examples: list[str] = []
    seed = shard.seed(config.seed)
    first = generators[shard.generator]
    second = generators[config.second_step_generator] if config.second_step_generator else first
    generator_label = first.name if second is first else f"{first.name}>{second.name}"
    items = shard.items
    stats["items"] = len(items)  # = parsed + every rejection (step one's included)
    instructions: dict[str, str] = {}
    if shard.task in TWO_STEP:  # step one: brainstorm tasks; each item then draws one of its list
        prompts = [render(TWO_STEP[shard.task], **it.params) for it in items]
        kept = []
        step1 = _generate(first, prompts, seed, None, shard, call_budget(TWO_STEP[shard.task], items))
        for it, text in zip(items, step1):
            try:
                tasks = parse_task_list(text)
            except Rejected as err:
                stats[f"step1_{err.reason}"] += 1
                if len(examples) < 5:
                    examples.append(f"{it.id}: {err}")
                continue
            pick = int(hashlib.sha1(f"{seed}:{it.id}".encode()).hexdigest(), 16) % len(tasks)
            instructions[it.id] = tasks[pick]
            kept.append(it)
        items = kept
        prompts = [render(shard.task, task=instructions[it.id], **it.params) for it in items]
        outputs = _generate(second, prompts, seed + 1, None, shard, call_budget(shard.task, items)) if items else []
    else:
        prompts = [render(shard.task, **it.params) for it in items]
        outputs = _generate(first, prompts, seed, STOP.get(shard.task), shard, call_budget(shard.task, items))
        generator_label = first.name
    records: list[dict] = []
    for it, text in zip(items, outputs):
        stats["generated"] += 1
        try:
            fields = parse_output(shard.task, text)
            _check_length([v for v in fields.values() if isinstance(v, str)], config)
        except Rejected as err:
            stats[err.reason] += 1
            if len(examples) < 5:
                examples.append(f"{it.id}: {err}")
            continue
        kind = TASK_TYPE_OF[shard.task]
        if shard.task == "query_generation":
            positives, negatives, pos_ids = [it.document], [], [it.doc_id]
        else:
            positives, negatives, pos_ids = [fields["positive"]], [fields["negative"]] if "negative" in fields else [], None
        record = Record(id=f"{source_name}-{it.id}", task_type=kind,
                        instruction=instructions.get(it.id) if shard.task in TWO_STEP else (
                            instruction if shard.task == "query_generation" else None),
                        query=fields["query"], positives=positives, negatives=negatives, positive_ids=pos_ids,
                        language=it.language, source=source_name, generator=generator_label)
        if record.instruction is None:
            from embedpipe.encoder.instructions import default_instruction

            record = record.model_copy(update={"instruction": default_instruction(kind)})
        records.append(record.to_json())
        stats["parsed"] += 1
    return {"shard": shard.name, "generator": generator_label, "records": records, "stats": dict(stats),
            "rejected_examples": examples}


# --------------------------------------------------------------------------------------------------------- filters


def dedupe(records: list[Record]) -> tuple[list[Record], int]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in records:
        key = (normalise(r.query), normalise(r.positives[0]))
        if key in seen or key[0] == key[1]:
            continue
        seen.add(key)
        out.append(r)
    return out, len(records) - len(out)


def add_other_labels(records: list[Record], limit: int = 8) -> tuple[list[Record], int]:
    """Classification records: after the misleading label, the other label names, up to ``limit`` negatives: first
    those of the record's own task (records of one brainstormed task share its instruction), then those of the other
    classification tasks in its language, each in first-seen order; never a text equal to the record's label. The
    teacher margin cannot fill these (the labels of a task score alike), so without them a record whose task has
    few examples would stay short of k. Returns the records and how many negatives were added."""
    by_task: dict[str, list[str]] = {}
    by_language: dict[str, list[str]] = {}
    for r in records:
        if r.task_type == "classification" and r.instruction:
            for table, key in ((by_task, r.instruction), (by_language, r.language)):
                known = table.setdefault(key, [])
                for text in (*r.positives[:1], *r.negatives[:1]):
                    if all(normalise(text) != normalise(k) for k in known):
                        known.append(text)
    out, added = [], 0
    for r in records:
        if r.task_type != "classification" or not r.instruction:
            out.append(r)
            continue
        have = {normalise(t) for t in (*r.positives, *r.negatives)}
        extra: list[str] = []
        for text in (*by_task[r.instruction], *by_language[r.language]):
            if len(r.negatives) + len(extra) >= limit:
                break
            if normalise(text) not in have:
                have.add(normalise(text))
                extra.append(text)
        added += len(extra)
        out.append(r.model_copy(update={"negatives": [*r.negatives, *extra]}) if extra else r)
    return out, added


def consistency_filter(records: list[Record], corpus: list[tuple[str, str]], teacher: str, top_k: int,
                       batch_size: int = 64, device: str = "auto") -> tuple[list[Record], dict]:
    """Keep retrieval records whose query ranks their positive in the teacher's top-k over corpus + generated docs."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from embedpipe.assets import resolve_model

    retrieval = [i for i, r in enumerate(records) if r.task_type == "retrieval"]
    if not retrieval:
        return records, {"checked": 0, "failed": 0}
    pool: dict[str, int] = {}
    texts: list[str] = []
    for _, text in corpus:
        if text not in pool:
            pool[text] = len(texts)
            texts.append(text)
    for i in retrieval:
        for text in records[i].positives[:1] + records[i].negatives:
            if text not in pool:
                pool[text] = len(texts)
                texts.append(text)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(resolve_model(teacher), device=device)
    docs = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    queries = model.encode([records[i].query for i in retrieval], batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True)
    failed: set[int] = set()
    for start in range(0, len(retrieval), 256):
        block = retrieval[start:start + 256]
        scores = queries[start:start + 256] @ docs.T
        pos = np.array([pool[records[i].positives[0]] for i in block])
        pos_scores = scores[np.arange(len(block)), pos]
        ranks = (scores > pos_scores[:, None]).sum(axis=1)
        failed |= {i for i, rank in zip(block, ranks) if rank >= top_k}
    kept = [r for i, r in enumerate(records) if i not in failed]
    del model
    return kept, {"checked": len(retrieval), "failed": len(failed), "pool": len(texts), "device": device}


# ------------------------------------------------------------------------------------------------------- top level


def load_seed_corpus(config: SDGConfig, corpus_path: str | Path | None) -> list[tuple[str, str]]:
    """(id, text) documents: the build's corpus.jsonl, or Python's docs when no file is given and seed_corpus=pydoc."""
    if corpus_path:
        from embedpipe import storage

        local = storage.local_copy(str(corpus_path)) if storage.is_remote(str(corpus_path)) else Path(corpus_path)
        rows = [(str(r["id"]), str(r["text"])) for r in read_jsonl(local, required=("id", "text"))]
        documents = [(doc_id, text) for doc_id, text in rows if text.strip()]
        if len(documents) < len(rows):
            log.warning("%s: %d of %d seed documents have empty text and were skipped", local,
                        len(rows) - len(documents), len(rows))
        return documents
    if config.seed_corpus != "pydoc":
        raise ValueError(f"sdg.seed_corpus={config.seed_corpus!r} needs a corpus_path")
    from embedpipe.data.config import SourceConfig
    from embedpipe.data.pydoc_source import load_pydoc

    return list(load_pydoc(SourceConfig(name="pydoc", kind="pydoc")).training.documents.items())


class ShardStore:
    """Finished shards, one JSON file each, in a local folder or under an s3:// prefix (each uploaded the moment it
    is done, marker last, so a restarted task on any node finds what was finished and a half-written shard is never
    read)."""

    def __init__(self, root: str | os.PathLike):
        from embedpipe import storage

        self.storage = storage
        self.root = str(root)
        self.remote = storage.is_remote(self.root)
        if not self.remote:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def uri(self, name: str) -> str:
        return self.storage.join(self.root, f"{name}.json") if self.remote else str(Path(self.root) / f"{name}.json")

    def get(self, name: str) -> dict | None:
        uri = self.uri(name)
        if self.remote:
            return self.storage.read_json(uri) if self.storage.is_complete(uri) else None
        path = Path(uri)
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, name: str, result: dict) -> None:
        if self.remote:
            self.storage.write_text(self.uri(name), json.dumps(result, ensure_ascii=False))
            return
        path = Path(self.uri(name))
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(result, ensure_ascii=False))
        os.replace(partial, path)


def _close(generator) -> None:
    close = getattr(generator, "close", None)
    if callable(close):
        close()


@dataclass(frozen=True)
class SyntheticSource:
    """Where generated records say they come from: the data section's synthetic source (its name, and the
    instruction query-generation records carry)."""

    name: str = "synthetic"
    instruction: str | None = None


def synthetic_source(data: DataConfig) -> SyntheticSource:
    """The data section's ``kind: synthetic`` source; its instruction, else the first other source's."""
    synthetic = next((s for s in data.sources if s.kind == "synthetic"), None)
    instruction = (synthetic.instruction if synthetic and synthetic.instruction else None) or next(
        (s.instruction for s in data.sources if s.kind != "synthetic" and s.instruction), None)
    return SyntheticSource(synthetic.name if synthetic else "synthetic", instruction)


def generate_synthetic(config: SDGConfig, corpus_path: str | Path | None, out_dir: str | Path,
                       source: SyntheticSource = SyntheticSource(),
                       generators: dict[str, Any] | None = None, max_shards: int | None = None,
                       only_generator: str | None = None, generate: bool = True,
                       shard_store: str | Path | None = None) -> dict:
    """Run (or resume) SDG by the sdg section; writes ``out_dir/synthetic.jsonl`` and ``out_dir/sdg_manifest.json``.

    ``source``: the name and instruction the records carry (:func:`synthetic_source` of the data section).
    ``generators`` maps generator names to ready backends (tests, or a caller that shares them); by default they are
    built from ``config.generators``. ``max_shards`` stops after that many new shards (a partial, resumable run).
    ``only_generator`` runs that generator's shards only (and writes no synthetic.jsonl: the shards are the output);
    ``generate=False`` generates nothing and refuses to go on while a shard is missing (the filter step after the
    per-generator tasks). ``shard_store`` is where shards go (default ``out_dir/shards``).
    """
    from embedpipe import storage

    remote = storage.is_remote(str(out_dir))
    if remote:  # small outputs are written locally, then uploaded; shards go straight to the store
        import tempfile

        out = Path(tempfile.gettempdir()) / "embedpipe-sdg" / hashlib.sha256(str(out_dir).encode()).hexdigest()[:16]
    else:
        out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = ShardStore(shard_store or storage.join(str(out_dir), "shards"))
    started = time.perf_counter()
    source_name, instruction = source.name, source.instruction
    summary: dict[str, Any] = {"out_dir": str(out_dir), "enabled": config.enabled, "shard_store": store.root}
    if not config.enabled:
        write_records([], out / "synthetic.jsonl")
        return {**summary, "records": 0}

    corpus = load_seed_corpus(config, corpus_path)
    shards = plan(config, corpus)
    names = [g.name for g in config.generators]
    if only_generator is not None:
        if only_generator not in names:
            raise ValueError(f"generator {only_generator!r} is not in sdg.generators ({', '.join(names)})")
        shards = [s for s in shards if s.generator == only_generator]
        summary["generator"] = only_generator
    shards.sort(key=lambda s: names.index(s.generator))  # generator by generator: one engine in memory at a time
    last_shard = {s.generator: i for i, s in enumerate(shards)}
    built = False
    if generators is None and generate:
        from embedpipe.data.generators import make_generator

        wanted = {s.generator for s in shards} | ({config.second_step_generator} if config.second_step_generator else set())
        generators = {g.name: make_generator(g) for g in config.generators if g.name in wanted}
        built = True
    done, skipped, new, missing = [], 0, 0, []
    gen_seconds = 0.0
    try:
        for i, shard in enumerate(shards):
            existing = store.get(shard.name)
            if existing is not None:
                skipped += 1
                done.append(existing)
            elif not generate:
                missing.append(f"{shard.name} ({shard.generator})")
            elif max_shards is not None and new >= max_shards:
                break
            else:
                t0 = time.perf_counter()
                result = run_shard(shard, generators, config, source_name, instruction)
                result["seconds"] = round(time.perf_counter() - t0, 3)
                gen_seconds += result["seconds"]
                store.put(shard.name, result)
                done.append(result)
                new += 1
                log.info("sdg shard %s (%s): %d records, %s", shard.name, result["generator"], len(result["records"]),
                         result["stats"])
            if generators and last_shard[shard.generator] == i and shard.generator != config.second_step_generator \
                    and shard.generator in generators:
                _close(generators[shard.generator])  # its engine's GPU memory goes back before the next one starts
    finally:
        if built:
            for generator in generators.values():
                _close(generator)
    if missing:
        raise RuntimeError(f"SDG shard store {store.root} lacks {len(missing)} of {len(shards)} shards: "
                           f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; run their generators' tasks first")
    complete = len(done) == len(shards)
    parse_stats: Counter = Counter()
    for result in done:
        parse_stats.update(result["stats"])
    summary.update({
        "complete": complete, "shards": len(shards), "shards_done": len(done), "shards_skipped": skipped,
        "shards_generated": new, "items": parse_stats.get("items", 0), "parsed": parse_stats.get("parsed", 0),
        "generated": parse_stats.get("generated", 0),
        "rejected": {k: v for k, v in parse_stats.items() if k not in ("parsed", "generated", "items")},
        "generation_seconds": round(gen_seconds, 3),
    })
    if only_generator is not None:  # one generator's task: its shards are its output; the filter step combines
        summary.update({"records": parse_stats.get("parsed", 0), "seconds": round(time.perf_counter() - started, 3)})
        (out / "sdg_manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
        if remote:
            storage.upload(str(out), str(out_dir))
        return summary
    # validated when run_shard made them (Record(...)); a shard holds their JSON
    records = [Record.model_construct(**r) for result in done for r in result["records"]]
    records, duplicates = dedupe(records)
    records, other_labels = add_other_labels(records)
    consistency = {"checked": 0, "failed": 0}
    if config.consistency_top_k and records:
        records, consistency = consistency_filter(records, corpus, config.teacher, config.consistency_top_k,
                                                  batch_size=config.teacher_batch_size, device=config.teacher_device)
    summary.update({
        "duplicates": duplicates, "consistency": consistency, "records": len(records),
        "other_label_negatives": other_labels,
        "by_generator": dict(Counter(r.generator for r in records)), "by_task": dict(Counter(r.task_type for r in records)),
        "by_kind": dict(Counter(kind_of(r) for r in records)),
        "by_language": dict(Counter(r.language for r in records)),
        "seconds": round(time.perf_counter() - started, 3),
    })
    if complete:
        write_records(records, out / "synthetic.jsonl")
    (out / "sdg_manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
    if remote:
        storage.upload(str(out), str(out_dir))
    _log_mlflow(summary)
    return summary


def _log_mlflow(summary: dict) -> None:
    if not tracking.active():
        return
    import mlflow

    mlflow.log_metrics({"sdg.records": summary["records"], "sdg.parsed": summary["parsed"],
                        "sdg.generated": summary["generated"], "sdg.consistency_failed": summary["consistency"]["failed"],
                        "sdg.duplicates": summary["duplicates"], "sdg.seconds": summary["seconds"]})
