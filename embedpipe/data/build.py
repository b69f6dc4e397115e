"""The data build step: every recipe source -> decontaminated training records, a corpus, a manifest, eval tasks.

Output layout (``out_dir``, local or ``s3://``)::

    records.jsonl      public-set records (embedpipe.data.schema), decontaminated
    corpus.jsonl       {"id", "text"} documents: the mining corpus and the SDG seed corpus
    manifest.json      counts per source / task type / language, drops, decontamination, per-stage mix sizes
    eval/tasks.json    held-out evaluation tasks (LocalTaskConfig dicts, paths relative to eval/)
    eval/<task>/       BEIR folders of those tasks
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from embedpipe import tracking
from embedpipe.data.decontaminate import collect_eval_texts, decontaminate
from embedpipe.data.config import DataConfig
from embedpipe.data.mix import StageMix, mix_manifest, stage_manifests
from embedpipe.data.schema import ReadReport, Record, iter_records, read_records, write_jsonl, write_records
from embedpipe.data.sources import Loaded, load_source

log = logging.getLogger(__name__)

PYDOC_TASK = "PydocRetrieval"


def write_beir(folder: Path, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, int]],
               split: str = "test", more_splits: dict[str, dict[str, dict[str, int]]] | None = None) -> None:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); ``more_splits``: further qrels files (e.g. the
    dev split) over the same corpus and queries file."""
    write_jsonl(({"_id": k, "title": "", "text": v} for k, v in corpus.items()), folder / "corpus.jsonl")
    write_jsonl(({"_id": k, "text": v} for k, v in queries.items()), folder / "queries.jsonl")
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rels_of in {split: qrels, **(more_splits or {})}.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, rels in rels_of.items()
                                                    for d, s in rels.items()]
        (folder / "qrels" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _load_all(data_cfg: DataConfig, eval_dir: Path, corpora: dict | None = None) -> tuple[dict[str, Loaded], list[dict]]:
    """``corpora`` collects where each built-in corpus came from (pydoc: the pinned snapshot's Python version and
    digest), for the manifest."""
    from embedpipe.evaluation.config import LocalTaskConfig

    loaded: dict[str, Loaded] = {}
    tasks: list[dict] = []
    for source in data_cfg.sources:
        started = time.perf_counter()
        if source.kind == "synthetic":
            if not source.path:
                log.info("source %s: synthetic records come from the SDG step", source.name)
                continue
            report = ReadReport(source.path)
            records = read_records(source.path, lenient=data_cfg.lenient, report=report)
            loaded[source.name] = Loaded(records=[r.model_copy(update={"source": source.name}) for r in records],
                                         dropped=Counter(report.dropped))
        elif source.kind == "pydoc":
            from embedpipe.data.pydoc_source import load_pydoc

            data = load_pydoc(source, seed=data_cfg.seed)
            loaded[source.name] = data.training
            if corpora is not None:
                corpora[source.name] = data.corpus
            if data.eval_queries:
                folder = "pydoc-retrieval" if source.name == "pydoc" else f"{source.name}-retrieval"
                write_beir(eval_dir / folder, data.eval_corpus, {**data.eval_queries, **data.dev_queries},
                           data.eval_qrels, more_splits={"dev": data.dev_qrels} if data.dev_qrels else None)
                name = PYDOC_TASK if source.name == "pydoc" else f"{source.name.title()}Retrieval"
                tasks.append(LocalTaskConfig(name=name, type="retrieval", path=folder, split="test",
                                             dev_split="dev" if data.dev_qrels else None,
                                             instruction=source.instruction, language=source.language).model_dump())
        else:
            loaded[source.name] = load_source(source, lenient=data_cfg.lenient)
        got = loaded.get(source.name)
        if got is not None and got.dropped and not data_cfg.lenient:
            raise ValueError(f"source {source.name!r} ({source.path or source.kind}) has rows that do not convert: "
                             f"{dict(got.dropped)}; fix them or set data.lenient: true to drop and count them")
        if got is not None:
            log.info("source %s: %d records, %d documents (%.1fs)%s", source.name, len(got.records),
                     len(got.documents), time.perf_counter() - started,
                     f", dropped {dict(got.dropped)}" if got.dropped else "")
    return loaded, tasks


def build_training_data(data_cfg: DataConfig, out_dir: str | Path, stages: Mapping[str, StageMix] | None = None) -> dict:
    """Load, validate, decontaminate and write the data section's public-set training data; returns the manifest.

    ``stages``: the training stages (``{"stage1": training.stage1, ...}``) whose mixes the manifest counts with their
    own weights and task types; without them each stage's mix by the sources' weights alone."""
    from embedpipe import storage

    remote = storage.is_remote(str(out_dir))
    work = Path(tempfile.mkdtemp(prefix="embedpipe-data-")) if remote else Path(out_dir)
    try:
        manifest = _build(data_cfg, work, stages)
        if remote:
            storage.upload(str(work), str(out_dir))
    finally:
        if remote:
            shutil.rmtree(work, ignore_errors=True)
    manifest["out_dir"] = str(out_dir)
    return manifest


def _build(data_cfg: DataConfig, out: Path, stages: Mapping[str, StageMix] | None) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    eval_dir = out / "eval"
    eval_dir.mkdir(exist_ok=True)
    corpora: dict[str, dict] = {}
    loaded, tasks = _load_all(data_cfg, eval_dir, corpora)
    (eval_dir / "tasks.json").write_text(json.dumps(tasks, indent=2) + "\n")

    records: list[Record] = []
    documents: dict[str, str] = {}
    seen_ids: set[str] = set()
    dropped: dict[str, dict[str, int]] = {}
    for name, got in loaded.items():
        drops = Counter(got.dropped)
        for record in got.records:
            if record.id in seen_ids:
                drops["duplicate_id"] += 1
                continue
            seen_ids.add(record.id)
            records.append(record)
        for doc_id, text in got.documents.items():
            documents.setdefault(doc_id, text)
        if drops:
            dropped[name] = dict(drops)

    eval_sets = collect_eval_texts(data_cfg.decontaminate_against, [eval_dir] if tasks else [])
    records, decon = decontaminate(records, eval_sets)
    if eval_sets:
        from embedpipe.data.decontaminate import normalise

        contaminated = set().union(*eval_sets.values())
        before = len(documents)
        documents = {k: v for k, v in documents.items() if normalise(v) not in contaminated}
        decon["corpus_documents_removed"] = before - len(documents)

    write_records(records, out / "records.jsonl")
    write_jsonl(({"id": k, "text": v} for k, v in documents.items()), out / "corpus.jsonl")
    manifest = {
        **mix_manifest(records),
        "corpus_documents": len(documents),
        "dropped": dropped,
        "decontamination": decon,
        "eval_tasks": [t["name"] for t in tasks],
        "corpora": corpora,  # e.g. pydoc: {"source": "pydoc_data.topics", "python": "3.11.7", "sha256": ...}
        "stages": stage_manifests(records, data_cfg, stages),
        "seed": data_cfg.seed,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _log_mlflow(manifest, out / "manifest.json")
    return manifest


@dataclass
class MiningInput:
    """The records the miner gets, combined once: the data build's (decontaminated by the build) streamed from its
    file, then SDG's (decontaminated here, the only time), without an id the public records already use; and the
    documents SDG wrote (positives and negatives that are not the data corpus's), which join the mining corpus so
    that a record whose positive the LLM wrote is mined like any other. ``report`` counts what was dropped and why."""

    public: Path | None
    synthetic: list[Record]
    report: dict = field(default_factory=dict)
    _dropped_ids: set[str] = field(default_factory=set)

    def records(self) -> Iterator[Record]:
        """Every record once, public first; a synthetic record whose id a public record has is dropped and counted."""
        synthetic_ids = {r.id for r in self.synthetic}
        clash = 0
        if self.public is not None:
            for record in iter_records(self.public, trusted=True):
                if record.id in synthetic_ids:
                    self._dropped_ids.add(record.id)
                    clash += 1
                yield record
        self.report["synthetic_duplicate_ids_dropped"] = clash
        for record in self.synthetic:
            if record.id not in self._dropped_ids:
                yield record

    def documents(self) -> Iterator[dict]:
        """``{"id", "text"}`` of every text SDG wrote as a positive or negative (query generation's positives are
        the data corpus's own documents, found there by id); one row per distinct text."""
        seen: set[str] = set()
        for record in self.synthetic:
            texts = [] if record.positive_ids else list(record.positives)
            texts += record.negatives
            for text in texts:
                key = text.strip()
                if key in seen:
                    continue
                seen.add(key)
                digest = hashlib.blake2b(key.encode("utf-8"), digest_size=10).hexdigest()
                yield {"id": f"{record.source}-doc-{digest}", "text": text}


def combine_for_mining(records_path: str | Path | None, synthetic_path: str | Path | None,
                       eval_dir: str | Path | None = None, decontaminate_against: list[str] | None = None,
                       lenient: bool = True) -> MiningInput:
    """The mining step's input (:class:`MiningInput`): public records as the build wrote them, SDG's records read
    (``lenient``: bad rows dropped and counted), deduplicated by id and decontaminated against the build's held-out
    tasks and ``decontaminate_against``."""
    report = ReadReport(str(synthetic_path)) if synthetic_path else None
    synthetic: list[Record] = []
    decon: dict = {"removed": 0, "by_source": {}, "by_eval_set": {}}
    if synthetic_path and Path(synthetic_path).is_file() and Path(synthetic_path).stat().st_size:
        synthetic = read_records(synthetic_path, lenient=lenient, report=report, trusted=True)  # SDG validated them
        eval_dirs = [eval_dir] if eval_dir and (Path(eval_dir) / "tasks.json").is_file() else []
        synthetic, decon = decontaminate(synthetic, collect_eval_texts(decontaminate_against or [], eval_dirs))
    public = Path(records_path) if records_path else None
    return MiningInput(public, synthetic, {
        "synthetic": {**mix_manifest(synthetic), "read": report.to_dict() if report else None,
                      "decontamination": decon},
    })


def _log_mlflow(manifest: dict, manifest_path: Path) -> None:
    if not tracking.active():
        return
    import mlflow

    metrics = {"data.records": manifest["records"], "data.corpus_documents": manifest["corpus_documents"],
               "data.decontaminated": manifest["decontamination"]["removed"]}
    metrics.update({f"data.source.{k}": v for k, v in manifest["by_source"].items()})
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(manifest_path), artifact_path="data")
