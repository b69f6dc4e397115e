"""MTEB tasks over local files, so offline and embedded-default runs are scored by mteb's own evaluators.

Each :class:`~embedpipe.evaluation.config.LocalTaskConfig` becomes a subclass of the matching mteb ``AbsTask*`` whose
``load_data`` reads (and validates) local files instead of the hub. File formats (JSONL: one JSON object a line):

- ``retrieval``: a BEIR folder: ``corpus.jsonl`` (``_id``, ``text``, optional ``title``), ``queries.jsonl`` (``_id``,
  ``text``), ``qrels/<split>.tsv`` (``query-id  corpus-id  score``, tab separated, header line).
- ``reranking``: JSONL (``query``, ``positive``: [texts], ``negative``: [texts]), mteb's classic reranking layout.
- ``sts``: JSONL (``sentence1``, ``sentence2``, ``score``).
- ``pair_classification``: JSONL (``sentence1``, ``sentence2``, ``label`` 0/1).
- ``classification``: a folder with ``train.jsonl`` and ``<split>.jsonl`` (``text``, ``label``).
- ``clustering``: JSONL (``text``, ``label``).
- ``bitext``: JSONL (``sentence1``, ``sentence2``: translations of each other).

For every type but retrieval and classification ``path`` may be a file (the split) or a folder holding
``<split>.jsonl``. Errors name the file, the line and the field.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedpipe.encoder.instructions import TaskType, task_type
from embedpipe.evaluation.config import LocalTaskConfig

log = logging.getLogger(__name__)

TASKS_FILE = "tasks.json"

# embedpipe task type -> (mteb task type, main score)
MTEB_TYPES: dict[TaskType, tuple[str, str]] = {
    TaskType.RETRIEVAL: ("Retrieval", "ndcg_at_10"),
    TaskType.RERANKING: ("Reranking", "map_at_1000"),
    TaskType.STS: ("STS", "cosine_spearman"),
    TaskType.PAIR_CLASSIFICATION: ("PairClassification", "max_ap"),
    TaskType.CLASSIFICATION: ("Classification", "accuracy"),
    TaskType.CLUSTERING: ("Clustering", "v_measure"),
    TaskType.BITEXT: ("BitextMining", "f1"),
}

# mteb task type -> embedpipe task type (how the encoder formats its texts)
FROM_MTEB_TYPE: dict[str, TaskType] = {
    "Retrieval": TaskType.RETRIEVAL,
    "Reranking": TaskType.RERANKING,
    "InstructionRetrieval": TaskType.INSTRUCTION_RETRIEVAL,
    "InstructionReranking": TaskType.INSTRUCTION_RETRIEVAL,
    "STS": TaskType.STS,
    "PairClassification": TaskType.PAIR_CLASSIFICATION,
    "Classification": TaskType.CLASSIFICATION,
    "MultilabelClassification": TaskType.MULTILABEL_CLASSIFICATION,
    "Regression": TaskType.CLASSIFICATION,
    "Clustering": TaskType.CLUSTERING,
    "BitextMining": TaskType.BITEXT,
    "Summarization": TaskType.SUMMARIZATION,
}

# ISO 639-1 codes used in recipes -> mteb's "{ISO 639-3}-{script}"
LANGUAGES = {
    "en": "eng-Latn", "de": "deu-Latn", "fr": "fra-Latn", "es": "spa-Latn", "it": "ita-Latn", "pt": "por-Latn",
    "nl": "nld-Latn", "pl": "pol-Latn", "ru": "rus-Cyrl", "uk": "ukr-Cyrl", "zh": "cmn-Hans", "ja": "jpn-Jpan",
    "ko": "kor-Hang", "ar": "arb-Arab", "hi": "hin-Deva", "tr": "tur-Latn", "vi": "vie-Latn", "id": "ind-Latn",
    "sv": "swe-Latn", "da": "dan-Latn", "fi": "fin-Latn", "no": "nob-Latn", "cs": "ces-Latn", "th": "tha-Thai",
    "fa": "pes-Arab", "he": "heb-Hebr", "bn": "ben-Beng", "sw": "swa-Latn", "te": "tel-Telu",
}


class TaskFileError(ValueError):
    """A local task file in the wrong format; the message names the file, the line and the field."""


def mteb_language(code: str) -> str:
    if "-" in code:
        return code
    if code in LANGUAGES:
        return LANGUAGES[code]
    raise TaskFileError(f"language {code!r}: give an ISO 639-1 code ({', '.join(sorted(LANGUAGES))}) "
                        "or mteb's 'xxx-Script' form, e.g. 'eng-Latn'")


def embedpipe_type(mteb_type: str) -> TaskType:
    """The formatting style for an mteb task type (uni-encoder for anything not listed)."""
    return FROM_MTEB_TYPE.get(mteb_type, TaskType.STS)


# ------------------------------------------------------------------------------------------------ reading files
def _read_jsonl(path: Path, fields: dict[str, Callable[[Any], bool]], what: str) -> list[dict]:
    return [row for _, row in _read_numbered_jsonl(path, fields, what)]


def _read_numbered_jsonl(path: Path, fields: dict[str, Callable[[Any], bool]], what: str) -> list[tuple[int, dict]]:
    """(line number, row) pairs: later checks name the file line, not the row's position (blank lines skipped)."""
    if not path.is_file():
        raise TaskFileError(f"{what}: file {path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskFileError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise TaskFileError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            for field, check in fields.items():
                if field not in row:
                    raise TaskFileError(f"{path}:{number}: field {field!r} is missing ({what} needs "
                                        f"{', '.join(repr(f) for f in fields)})")
                if not check(row[field]):
                    raise TaskFileError(f"{path}:{number}: field {field!r} has an invalid value {row[field]!r}")
            rows.append((number, row))
    if not rows:
        raise TaskFileError(f"{path}: no rows")
    return rows


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _label(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _binary(value: Any) -> bool:
    return value in (0, 1) and not isinstance(value, (bool, float))


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(_text(v) for v in value)


def _split_file(path: Path, split: str) -> Path:
    return path / f"{split}.jsonl" if path.is_dir() else path


def files_revision(path: Path) -> str:
    """A short content hash of a task's files, recorded as the task's dataset revision."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def read_beir(folder: Path, split: str, max_corpus: int | None = None) -> dict:
    """BEIR folder -> mteb ``RetrievalSplitData`` pieces, checking that qrels name known queries and documents."""
    from datasets import Dataset

    if not folder.is_dir():
        raise TaskFileError(f"retrieval task: {folder} is not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")

    def ident(row: dict, path: Path, number: int) -> str:
        value = row.get("_id", row.get("id"))
        if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
            raise TaskFileError(f"{path}:{number}: field '_id' is missing or invalid")
        return str(value)

    corpus, queries = {}, {}
    # a document may carry its words in the title alone; a query must have text
    checks = {"corpus.jsonl": lambda v: isinstance(v, str), "queries.jsonl": _text}
    for name, target in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        path = folder / name
        for number, row in _read_numbered_jsonl(path, {"text": checks[name]}, f"retrieval {name}"):
            key = ident(row, path, number)
            if key in target:
                raise TaskFileError(f"{path}:{number}: field '_id': id {key!r} appears twice")
            if name == "corpus.jsonl" and not (row["text"].strip() or str(row.get("title") or "").strip()):
                raise TaskFileError(f"{path}:{number}: field 'text': empty, and no title (document {key!r})")
            target[key] = row
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise TaskFileError(f"retrieval task: {qrels_path} does not exist (qrels for split {split!r})")
    relevant: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as handle:
        for number, parts in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not parts or (number == 1 and parts[0] in ("query-id", "query_id", "qid")):
                continue
            if len(parts) != 3:
                raise TaskFileError(f"{qrels_path}:{number}: expected 3 tab-separated columns "
                                    f"(query-id, corpus-id, score), got {len(parts)}")
            qid, did, score = parts
            if qid not in queries:
                raise TaskFileError(f"{qrels_path}:{number}: query-id {qid!r} is not in {folder / 'queries.jsonl'}")
            if did not in corpus:
                raise TaskFileError(f"{qrels_path}:{number}: corpus-id {did!r} is not in {folder / 'corpus.jsonl'}")
            try:
                relevant.setdefault(qid, {})[did] = int(float(score))
            except (ValueError, OverflowError):
                raise TaskFileError(f"{qrels_path}:{number}: score {score!r} is not a number") from None
    if not relevant:
        raise TaskFileError(f"{qrels_path}: no relevance judgements")
    doc_ids = list(corpus)
    if max_corpus is not None and len(doc_ids) > max_corpus:
        judged = {d for docs in relevant.values() for d in docs}
        others = [d for d in doc_ids if d not in judged]
        keep = judged | set(others[: max(0, max_corpus - len(judged))])
        doc_ids = [d for d in doc_ids if d in keep]
    used_queries = [q for q in queries if q in relevant]
    return {
        "corpus": Dataset.from_list([{"id": d, "title": str(corpus[d].get("title") or ""), "text": corpus[d]["text"]}
                                     for d in doc_ids]),
        "queries": Dataset.from_list([{"id": q, "text": queries[q]["text"]} for q in used_queries]),
        "relevant_docs": relevant,
        "top_ranked": None,
    }


def read_reranking(path: Path) -> dict:
    """``{query, positive, negative}`` rows -> retrieval data with ``top_ranked`` candidates per query."""
    from datasets import Dataset

    rows = _read_numbered_jsonl(path, {"query": _text, "positive": _texts, "negative": _texts}, "reranking")
    doc_ids: dict[str, str] = {}
    queries, relevant, top_ranked = [], {}, {}
    for i, (number, row) in enumerate(rows):
        if not row["positive"]:
            raise TaskFileError(f"{path}:{number}: field 'positive' is empty (each query needs a relevant text)")
        qid = f"q{i}"
        queries.append({"id": qid, "text": row["query"]})
        candidates = []
        for text in row["positive"] + row["negative"]:
            candidates.append(doc_ids.setdefault(text, f"d{len(doc_ids)}"))
        relevant[qid] = {doc_ids[t]: 1 for t in row["positive"]}
        top_ranked[qid] = list(dict.fromkeys(candidates))
    corpus = Dataset.from_list([{"id": d, "title": "", "text": t} for t, d in doc_ids.items()])
    return {"corpus": corpus, "queries": Dataset.from_list(queries), "relevant_docs": relevant, "top_ranked": top_ranked}


# ------------------------------------------------------------------------------------------------ task classes
def build_task(config: LocalTaskConfig, base_dir: str | Path | None = None, max_corpus: int | None = None):
    """Instantiate an mteb task for ``config``; ``path`` is resolved against ``base_dir``. Files are read lazily."""
    from datasets import Dataset, DatasetDict
    from mteb import TaskMetadata
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.clustering import AbsTaskClustering
    from mteb.abstasks.pair_classification import AbsTaskPairClassification
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining

    kind = task_type(config.type)
    if kind not in MTEB_TYPES:
        raise TaskFileError(f"local task {config.name!r}: type {config.type!r} cannot be defined over local files; "
                            f"use one of {', '.join(t.value for t in MTEB_TYPES)}")
    path = Path(config.path)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if not path.exists():
        raise TaskFileError(f"local task {config.name!r}: {path} does not exist")
    mteb_type, main_score = MTEB_TYPES[kind]
    split = config.split
    metadata = TaskMetadata(
        name=config.name,
        description=f"Local {mteb_type} task read from {path}",
        dataset={"path": f"local/{config.name}", "revision": files_revision(path)},
        type=mteb_type,
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=[mteb_language(config.language)],
        main_score=main_score,
        prompt=config.instruction,
        sample_creation="found",
    )
    attrs: dict[str, Any] = {"metadata": metadata, "local_path": path, "local_config": config}

    def loader(build: Callable[[], Any]):
        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            self.dataset = build()
            self.data_loaded = True

        return load_data

    if kind == TaskType.RETRIEVAL:
        base = AbsTaskRetrieval
        attrs["load_data"] = loader(lambda: {"default": {split: read_beir(path, split, max_corpus)}})
    elif kind == TaskType.RERANKING:
        base = AbsTaskRetrieval
        attrs["load_data"] = loader(lambda: {"default": {split: read_reranking(_split_file(path, split))}})
    elif kind == TaskType.STS:
        base = AbsTaskSTS

        def sts():
            rows = _read_jsonl(_split_file(path, split), {"sentence1": _text, "sentence2": _text, "score": _number}, "sts")
            return DatasetDict({split: Dataset.from_list(
                [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": float(r["score"])} for r in rows])})

        def load_sts(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            self.dataset = sts()
            scores = self.dataset[split]["score"]
            self.min_score, self.max_score = min(scores), max(scores)
            if self.min_score == self.max_score:
                raise TaskFileError(f"{_split_file(path, split)}: every 'score' is {self.min_score}; STS needs graded pairs")
            self.data_loaded = True

        attrs["load_data"] = load_sts
    elif kind == TaskType.PAIR_CLASSIFICATION:
        base = AbsTaskPairClassification

        def pairs():
            rows = _read_jsonl(_split_file(path, split), {"sentence1": _text, "sentence2": _text, "label": _binary},
                               "pair_classification")
            return DatasetDict({split: Dataset.from_dict({"sentence1": [r["sentence1"] for r in rows],
                                                          "sentence2": [r["sentence2"] for r in rows],
                                                          "labels": [int(r["label"]) for r in rows]})})

        attrs["load_data"] = loader(pairs)
    elif kind == TaskType.CLASSIFICATION:
        base = AbsTaskClassification
        attrs["n_experiments"] = 10
        attrs["samples_per_label"] = 8

        def classification():
            if not path.is_dir():
                raise TaskFileError(f"classification task {config.name!r}: {path} must be a folder with train.jsonl "
                                    f"and {split}.jsonl")
            parts = {name: _read_jsonl(path / f"{name}.jsonl", {"text": _text, "label": _label}, "classification")
                     for name in dict.fromkeys(["train", split])}
            labels = sorted({str(r["label"]) for rows in parts.values() for r in rows})
            ids = {label: i for i, label in enumerate(labels)}
            return DatasetDict({name: Dataset.from_dict({"text": [r["text"] for r in rows],
                                                         "label": [ids[str(r["label"])] for r in rows]})
                                for name, rows in parts.items()})

        attrs["load_data"] = loader(classification)
    elif kind == TaskType.CLUSTERING:
        base = AbsTaskClustering
        attrs["max_fraction_of_documents_to_embed"] = None
        attrs["max_document_to_embed"] = None

        def clustering():
            rows = _read_jsonl(_split_file(path, split), {"text": _text, "label": _label}, "clustering")
            labels = sorted({str(r["label"]) for r in rows})
            ids = {label: i for i, label in enumerate(labels)}
            return DatasetDict({split: Dataset.from_dict({"sentences": [r["text"] for r in rows],
                                                          "labels": [ids[str(r["label"])] for r in rows]})})

        attrs["load_data"] = loader(clustering)
    else:  # bitext
        base = AbsTaskBitextMining

        def bitext():
            rows = _read_jsonl(_split_file(path, split), {"sentence1": _text, "sentence2": _text}, "bitext")
            return DatasetDict({split: Dataset.from_dict({"sentence1": [r["sentence1"] for r in rows],
                                                          "sentence2": [r["sentence2"] for r in rows]})})

        attrs["load_data"] = loader(bitext)
    cls = type(f"Local{mteb_type}_{config.name}", (base,), attrs)
    return cls()


def read_tasks_file(tasks_dir: str | Path) -> list[LocalTaskConfig]:
    """``tasks_dir/tasks.json``: a list of LocalTaskConfig dicts (paths relative to ``tasks_dir``)."""
    from pydantic import ValidationError

    tasks_dir = Path(tasks_dir)
    path = tasks_dir / TASKS_FILE
    if not path.is_file():
        raise TaskFileError(f"{tasks_dir} has no {TASKS_FILE} (a list of local task definitions)")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TaskFileError(f"{path}: invalid JSON ({err.msg})") from None
    if not isinstance(items, list):
        raise TaskFileError(f"{path}: expected a list of task definitions, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        try:
            config = LocalTaskConfig.model_validate(item)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise TaskFileError(f"{path}: task {i}: {problems}") from None
        if not Path(config.path).is_absolute():
            config = config.model_copy(update={"path": str(tasks_dir / config.path)})
        out.append(config)
    return out


def write_tasks_file(tasks: list[LocalTaskConfig | dict], tasks_dir: str | Path) -> Path:
    """Write ``tasks.json`` (the data build's hand-over to evaluation)."""
    items = [t.model_dump() if isinstance(t, LocalTaskConfig) else LocalTaskConfig.model_validate(t).model_dump()
             for t in tasks]
    path = Path(tasks_dir) / TASKS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=2))
    return path
