"""Adapters that turn the formats users have into :class:`~embedpipe.data.schema.Record` rows.

- BEIR folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), local or ``s3://``.
- Hugging Face datasets by name, with the column layouts of the paper's fine-tuning sets (MS MARCO, NQ, HotpotQA,
  FEVER, SQuAD, TriviaQA, Quora, MIRACL, Mr.TyDi, MultiNLI, GooAQ, SciFact, NFCorpus); a dataset saved with
  ``save_to_disk`` loads from its folder the same way.
- Local JSONL/Parquet: either already in the record schema, or rows with a known column layout.
- Classification rows become contrastive records (anchor = text, positive = its label's name, negatives = the other
  label names); STS/paraphrase pairs become symmetric records (both directions).

Every adapter returns an :class:`Loaded` with the records, the documents it saw (the mining corpus) and drop counts.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from embedpipe.data.config import SourceConfig
from embedpipe.data.schema import Loaded, ReadReport, Record, read_jsonl, read_records

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- column layouts

# Layout names -> how a row maps onto a record. ``kind``: pair (query, positive[, negative...]), passages (lists of
# {docid,title,text} dicts, MIRACL/Mr.TyDi style), classification (text, label), sts (two sentences + score),
# beir_hub (BEIR's hub layout: "corpus"/"queries" configs + a "<name>-qrels" dataset).
LAYOUTS: dict[str, dict[str, Any]] = {
    "triplet": {"kind": "pair", "query": "anchor", "positive": "positive", "negative": ["negative"]},
    "query_positive_negative": {"kind": "pair", "query": "query", "positive": "positive", "negative": ["negative"]},
    "query_answer": {"kind": "pair", "query": "query", "positive": "answer"},
    "question_answer": {"kind": "pair", "query": "question", "positive": "answer"},
    "anchor_positive": {"kind": "pair", "query": "anchor", "positive": "positive"},
    "paraphrase": {"kind": "pair", "query": "anchor", "positive": "positive", "symmetric": True},
    "nli": {"kind": "pair", "query": "anchor", "positive": "positive", "negative": ["negative"], "symmetric": True},
    "passages": {"kind": "passages", "query": "query", "positive": "positive_passages", "negative": "negative_passages"},
    "classification": {"kind": "classification", "text": "text", "label": "label"},
    "sts": {"kind": "sts", "sentence1": "sentence1", "sentence2": "sentence2", "score": "score"},
    "beir_hub": {"kind": "beir_hub"},
}

# The paper's public fine-tuning sets on the hub: dataset name -> (layout, subset/config, split).
HF_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "sentence-transformers/msmarco-bm25": ("query_positive_negative", "triplet", "train"),
    "sentence-transformers/natural-questions": ("query_answer", None, "train"),
    "sentence-transformers/hotpotqa": ("triplet", "triplet", "train"),
    "sentence-transformers/fever": ("triplet", "triplet", "train"),
    "sentence-transformers/squad": ("question_answer", None, "train"),
    "sentence-transformers/trivia-qa": ("query_answer", None, "train"),
    "sentence-transformers/gooaq": ("question_answer", None, "train"),
    "sentence-transformers/quora-duplicates": ("paraphrase", "pair", "train"),
    "sentence-transformers/all-nli": ("nli", "triplet", "train"),
    "miracl/miracl": ("passages", "en", "train"),
    "castorini/mr-tydi": ("passages", "english", "train"),
    "BeIR/scifact": ("beir_hub", None, "train"),
    "BeIR/nfcorpus": ("beir_hub", None, "train"),
}

QUERY_COLUMNS = ("query", "question", "anchor", "sentence1", "text1", "title")
POSITIVE_COLUMNS = ("positive", "answer", "pos", "document", "passage", "context", "sentence2", "text2")


def infer_layout(columns: Iterable[str]) -> dict[str, Any]:
    """Guess the layout of a table from its column names (used for unknown datasets and plain local files)."""
    cols = set(columns)
    if {"positive_passages"} <= cols:
        return LAYOUTS["passages"]
    if {"text", "label"} <= cols and not cols & {"query", "anchor", "positive"}:
        return LAYOUTS["classification"]
    if {"sentence1", "sentence2", "score"} <= cols:
        return LAYOUTS["sts"]
    query = next((c for c in QUERY_COLUMNS if c in cols), None)
    positive = next((c for c in POSITIVE_COLUMNS if c in cols and c != query), None)
    if query is None or positive is None:
        raise ValueError(f"cannot infer a column layout from columns {sorted(cols)}; set `layout` on the source "
                         f"(one of {', '.join(LAYOUTS)})")
    negatives = sorted(c for c in cols if c == "negative" or c.startswith("negative_"))
    return {"kind": "pair", "query": query, "positive": positive, "negative": negatives}


def _layout_for(source: SourceConfig, columns: Iterable[str], dataset_name: str | None = None) -> dict[str, Any]:
    if source.layout:
        if source.layout not in LAYOUTS:
            raise ValueError(f"source {source.name!r}: unknown layout {source.layout!r}; expected one of {', '.join(LAYOUTS)}")
        return LAYOUTS[source.layout]
    if dataset_name in HF_DATASETS:
        return LAYOUTS[HF_DATASETS[dataset_name][0]]
    return infer_layout(columns)


def _doc_id(text: str) -> str:
    return "d" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def rows_to_records(rows: Iterable[dict], source: SourceConfig, layout: dict[str, Any],
                    label_names: list[str] | None = None) -> Loaded:
    """Convert table rows with a layout into records; bad rows are counted per reason, never raised."""
    out = Loaded()
    kind = layout["kind"]
    rng = random.Random(f"{source.name}")
    task = source.task_type
    seen_pairs: set[tuple[str, str]] = set()
    rows = list(rows)
    class_label = label_names is not None
    if kind == "classification" and label_names is None:
        label_names = sorted({str(r.get(layout["label"])) for r in rows if r.get(layout["label"]) is not None})
        task = source.task_type if source.task_type != "retrieval" else "classification"
    elif kind == "classification":
        task = source.task_type if source.task_type != "retrieval" else "classification"
    if kind == "sts" and source.task_type == "retrieval":
        task = "sts"

    def emit(query: str, positives: list[str], negatives: list[str], pos_ids=None, neg_ids=None) -> None:
        if source.max_records and len(out.records) >= source.max_records:
            return
        rid = f"{source.name}-{len(out.records)}"
        out.records.append(Record(id=rid, task_type=task, instruction=source.instruction, query=query,
                                  positives=positives, negatives=negatives, language=source.language,
                                  source=source.name, positive_ids=pos_ids, negative_ids=neg_ids))

    for row in rows:
        if kind == "pair":
            query, positive = _clean(row.get(layout["query"])), _clean(row.get(layout["positive"]))
            if query is None or positive is None:
                out.drop("empty_text")
                continue
            negatives = [t for c in layout.get("negative", []) if (t := _clean(row.get(c)))]
            for text in (positive, *negatives):
                out.documents.setdefault(_doc_id(text), text)
            emit(query, [positive], negatives)
            if layout.get("symmetric") and (positive, query) not in seen_pairs:
                out.documents.setdefault(_doc_id(query), query)
                emit(positive, [query], negatives)
            seen_pairs.add((query, positive))
        elif kind == "passages":
            query = _clean(row.get(layout["query"]))
            pos = [p for p in row.get(layout["positive"]) or [] if _clean(p.get("text"))]
            neg = [p for p in row.get(layout["negative"]) or [] if _clean(p.get("text"))]
            if query is None or not pos:
                out.drop("empty_text" if query is None else "no_positive")
                continue

            def text_of(p: dict) -> str:
                title = _clean(p.get("title"))
                return f"{title}\n{p['text'].strip()}" if title else p["text"].strip()

            pos_texts, neg_texts = [text_of(p) for p in pos], [text_of(p) for p in neg]
            pos_ids = [str(p.get("docid") or _doc_id(t)) for p, t in zip(pos, pos_texts)]
            neg_ids = [str(p.get("docid") or _doc_id(t)) for p, t in zip(neg, neg_texts)]
            out.documents.update(zip(pos_ids + neg_ids, pos_texts + neg_texts))
            emit(query, pos_texts, neg_texts, pos_ids, neg_ids)
        elif kind == "classification":
            text, label = _clean(row.get(layout["text"])), row.get(layout["label"])
            if text is None or label is None:
                out.drop("empty_text" if text is None else "missing_label")
                continue
            if class_label and isinstance(label, int):
                name = label_names[label] if 0 <= label < len(label_names) else None
            else:
                name = str(label)
            if name not in label_names:
                out.drop("unknown_label")
                continue
            others = [n for n in label_names if n != name]
            rng.shuffle(others)
            emit(text, [name], others[:16])
        elif kind == "sts":
            a, b = _clean(row.get(layout["sentence1"])), _clean(row.get(layout["sentence2"]))
            score = row.get(layout["score"])
            if a is None or b is None:
                out.drop("empty_text")
                continue
            threshold = source.min_score
            if score is not None and threshold is not None and float(score) < threshold:
                out.drop("below_min_score")
                continue
            out.documents.setdefault(_doc_id(a), a)
            out.documents.setdefault(_doc_id(b), b)
            emit(a, [b], [])
            emit(b, [a], [])
        else:
            raise ValueError(f"layout kind {kind!r} is not a row layout")
    return out


# ------------------------------------------------------------------------------------------------------------ BEIR


def _beir_text(row: dict) -> str:
    title, text = (row.get("title") or "").strip(), (row.get("text") or "").strip()
    return f"{title}\n{text}" if title and text else (title or text)


def read_beir(folder: str | Path, split: str = "train") -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus id -> text, query id -> text, qrels query id -> {doc id: score}) of a BEIR folder."""
    from embedpipe import storage

    folder = storage.local_copy(str(folder)) if storage.is_remote(str(folder)) else Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"BEIR folder {folder} has no {name}")
    corpus = {str(r["_id"]): _beir_text(r) for r in read_jsonl(folder / "corpus.jsonl", required=("_id",))}
    queries = {str(r["_id"]): str(r.get("text") or "") for r in read_jsonl(folder / "queries.jsonl", required=("_id",))}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or (line_no == 1 and not row[-1].lstrip("-").isdigit()):
                continue  # header
            if len(row) < 3:
                raise ValueError(f"{folder}/qrels/{split}.tsv:{line_no}: expected query-id, corpus-id, score")
            try:
                qrels[row[0]][row[1]] = int(row[2])
            except ValueError:
                raise ValueError(f"{folder}/qrels/{split}.tsv:{line_no}: field 'score': not an integer "
                                 f"({row[2]!r})") from None
    return corpus, queries, dict(qrels)


def beir_to_records(corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, int]],
                    source: SourceConfig) -> Loaded:
    out = Loaded(documents={k: v for k, v in corpus.items() if v.strip()})
    for qid, rels in qrels.items():
        if source.max_records and len(out.records) >= source.max_records:
            break
        query = (queries.get(qid) or "").strip()
        if not query:
            out.drop("missing_query")
            continue
        pos_ids = [d for d, s in rels.items() if s > 0 and d in out.documents]
        if not pos_ids:
            out.drop("no_positive")
            continue
        out.records.append(Record(id=f"{source.name}-{qid}", task_type=source.task_type, instruction=source.instruction,
                                  query=query, positives=[out.documents[d] for d in pos_ids], positive_ids=pos_ids,
                                  language=source.language, source=source.name))
    return out


def load_beir(source: SourceConfig) -> Loaded:
    corpus, queries, qrels = read_beir(source.path, source.split)
    return beir_to_records(corpus, queries, qrels, source)


# --------------------------------------------------------------------------------------------- Hugging Face datasets


def _open_hf(path: str, subset: str | None, split: str):
    """A dataset folder written by ``save_to_disk``, or a hub dataset by name (needs hub access)."""
    import datasets

    local = Path(path)
    if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists()
                           or (local / "state.json").exists()):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path}: no split {split!r} (has {', '.join(ds)})")
            ds = ds[split]
        return ds
    return datasets.load_dataset(path, subset, split=split)


# Multilingual sets: with ``language: multilingual`` and no ``subset``, every language config is loaded
# (config name -> ISO code kept on each record).
MULTILINGUAL_SUBSETS: dict[str, dict[str, str]] = {
    "miracl/miracl": {c: c for c in ("ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru",
                                     "sw", "te", "th", "yo", "zh")},
    "castorini/mr-tydi": {"arabic": "ar", "bengali": "bn", "english": "en", "finnish": "fi", "indonesian": "id",
                          "japanese": "ja", "korean": "ko", "russian": "ru", "swahili": "sw", "telugu": "te",
                          "thai": "th"},
}


def load_hf(source: SourceConfig) -> Loaded:
    """A Hugging Face dataset (hub name or ``save_to_disk`` folder) through its column layout."""
    name = source.path or source.name
    if source.subset is None and source.language == "multilingual" and name in MULTILINGUAL_SUBSETS:
        out = Loaded()
        for subset, code in MULTILINGUAL_SUBSETS[name].items():
            part = load_hf(source.model_copy(update={"subset": subset, "language": code,
                                                     "name": source.name}))
            for record in part.records:
                out.records.append(record.model_copy(update={"id": f"{source.name}-{code}-{record.id.rsplit('-', 1)[-1]}"}))
            out.documents.update(part.documents)
            out.dropped.update(part.dropped)
        return out
    known = HF_DATASETS.get(name)
    subset = source.subset if source.subset is not None else (known[1] if known else None)
    layout_name = source.layout or (known[0] if known else None)
    if layout_name is not None and layout_name not in LAYOUTS:
        raise ValueError(f"source {source.name!r}: unknown layout {layout_name!r}; expected one of {', '.join(LAYOUTS)}")
    if layout_name == "beir_hub":
        return _load_beir_hub(name, source)
    ds = _open_hf(name, subset, source.split)
    layout = LAYOUTS[layout_name] if layout_name else infer_layout(ds.column_names)
    label_names = None
    if layout["kind"] == "classification":
        feature = ds.features.get(layout["label"])
        label_names = list(getattr(feature, "names", None) or []) or None
    if source.max_records and layout["kind"] != "classification":
        ds = ds.select(range(min(len(ds), source.max_records * (2 if layout.get("symmetric") or layout["kind"] == "sts" else 1))))
    return rows_to_records(ds, source, layout, label_names)


def _load_beir_hub(name: str, source: SourceConfig) -> Loaded:
    """BEIR on the hub: ``<name>`` with "corpus"/"queries" configs and ``<name>-qrels`` with the relevance split."""
    import datasets

    local = Path(name)
    if local.is_dir():  # a local copy saved as <dir>/corpus, <dir>/queries, <dir>/qrels (save_to_disk folders)
        corpus_ds = datasets.load_from_disk(str(local / "corpus"))
        queries_ds = datasets.load_from_disk(str(local / "queries"))
        qrels_ds = datasets.load_from_disk(str(local / "qrels"))
    else:
        corpus_ds = datasets.load_dataset(name, "corpus", split="corpus")
        queries_ds = datasets.load_dataset(name, "queries", split="queries")
        qrels_ds = datasets.load_dataset(f"{name}-qrels", split=source.split)
    corpus = {str(r["_id"]): _beir_text(r) for r in corpus_ds}
    queries = {str(r["_id"]): str(r["text"]) for r in queries_ds}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for r in qrels_ds:
        qrels[str(r["query-id"])][str(r["corpus-id"])] = int(r["score"])
    return beir_to_records(corpus, queries, dict(qrels), source)


# ------------------------------------------------------------------------------------------------ local JSONL/Parquet


def load_table(source: SourceConfig, lenient: bool = True) -> Loaded:
    """Local/S3 JSONL or Parquet: record-schema files are validated as records; other tables go through a layout."""
    from embedpipe import storage

    path = str(source.path)
    local = storage.local_copy(path) if storage.is_remote(path) else Path(path)
    if not local.is_file():
        raise FileNotFoundError(f"source {source.name!r}: {path} does not exist")
    import datasets

    builder = "parquet" if local.suffix in (".parquet", ".pq") else "json"
    if builder == "json":
        first = next(iter(read_jsonl(local)), {})
    else:
        import pyarrow.parquet as pq

        first = {name: None for name in pq.read_schema(local).names}
    if "positives" in first:
        report = ReadReport(path)
        records = read_records(local, lenient=lenient, report=report)
        out = Loaded(dropped=Counter(report.dropped))
        for rec in records:
            if source.max_records and len(out.records) >= source.max_records:
                break
            updates = {"source": source.name}
            if rec.instruction is None and source.instruction:
                updates["instruction"] = source.instruction
            rec = rec.model_copy(update=updates)
            out.records.append(rec)
            ids = rec.positive_ids or [_doc_id(t) for t in rec.positives]
            out.documents.update(zip(ids, rec.positives))
        return out
    ds = datasets.load_dataset(builder, data_files=str(local), split="train")
    layout = _layout_for(source, ds.column_names)
    return rows_to_records(ds, source, layout)


def load_source(source: SourceConfig, lenient: bool = True) -> Loaded:
    """Dispatch on ``source.kind`` (``synthetic`` sources are produced by SDG and read by the build)."""
    if source.kind == "beir":
        return load_beir(source)
    if source.kind == "hf":
        return load_hf(source)
    if source.kind in ("jsonl", "parquet"):
        return load_table(source, lenient=lenient)
    if source.kind == "pydoc":
        from embedpipe.data.pydoc_source import load_pydoc

        return load_pydoc(source).training
    raise ValueError(f"source {source.name!r}: kind {source.kind!r} has no loader here")
