"""Hard-negative mining: records + corpus -> records with teacher-ranked, positive-aware hard negatives.

Steps: scan and validate the corpus; embed it chunk by chunk per teacher into the on-disk cache (reusing finished
chunks); then stream the records in blocks: embed the block's queries, retrieve ``candidates`` (+ the block's most
positives) neighbours per teacher, score the union of candidates with every teacher, combine the scores (weighted
mean, or max), and select negatives with :func:`embedpipe.mining.select.select_negatives`. Records are written as
they are mined, so memory follows ``chunk_size`` and ``query_block_size``, not queries x corpus.

Multi-teacher rule: candidate sets are united; each candidate's score is combined across teachers as the
weight-normalised mean (``combine: mean``) or the maximum (``combine: max``); positive scores are combined the same way,
and the margin is applied to the combined scores.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedpipe.mining.cache import EmbeddingCache
from embedpipe.mining.config import MiningConfig
from embedpipe.mining.corpus import Corpus, hash64_array, text_key
from embedpipe.mining.search import Searcher, gpu_count
from embedpipe.mining.select import fill_count, keep_given, select_negatives
from embedpipe.mining.stats import MiningStats, log_to_mlflow, print_summary
from embedpipe.mining.teachers import Teacher, load_teacher

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "embedpipe" / "mining"
SCORE_BLOCK = 512  # queries scored together when uniting several teachers' candidates


class MiningError(ValueError):
    """Input that cannot be mined (e.g. no record's positive is in the corpus)."""


def _record_rng(seed: int, record_id: str) -> np.random.Generator:
    """Per-record generator: sampling does not depend on record order or block boundaries."""
    digest = int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest])


def _query_instruction(record) -> str:
    from embedpipe.encoder.instructions import default_instruction

    return record.instruction or default_instruction(record.task_type)


@dataclass
class _Own:
    """A record's own negatives as kept: texts, ids, combined teacher scores and text hashes."""

    texts: list[str]
    ids: list[str]
    scores: list[float]
    text_hash: np.ndarray


class _Miner:
    def __init__(self, corpus: Corpus, teachers: list[Teacher], caches: list[EmbeddingCache],
                 searchers: list[Searcher], config: MiningConfig, stats: MiningStats):
        self.corpus, self.teachers, self.caches, self.searchers = corpus, teachers, caches, searchers
        self.config, self.stats = config, stats
        total = sum(t.weight for t in teachers)
        self.weights = np.array([t.weight / total for t in teachers], dtype=np.float32)

    def combine(self, per_teacher: list[np.ndarray]) -> np.ndarray:
        if len(per_teacher) == 1:
            return per_teacher[0]
        stacked = np.stack(per_teacher)
        if self.config.combine == "max":
            return stacked.max(axis=0)
        return np.tensordot(self.weights, stacked, axes=1)

    def _positives(self, block):
        """Per record: corpus indices of its positives (-1 = not in the corpus), found by id, else by text."""
        out = []
        for record in block:
            by_text = self.corpus.find_texts(record.positives)
            if record.positive_ids:
                found = self.corpus.find_ids(record.positive_ids)
                found = np.where(found >= 0, found, by_text)
            else:
                found = by_text
            out.append(found)
        return out

    def _score_texts(self, queries, owner, idx, texts):
        """Each text's combined teacher score against its owner's query: the cached corpus embedding where the text
        is a corpus document (``idx >= 0``), else embedded from its text."""
        missing = np.nonzero(idx < 0)[0]
        per_teacher = []
        for teacher, cache, q in zip(self.teachers, self.caches, queries):
            emb = cache.rows(np.maximum(idx, 0))
            if missing.size:
                emb[missing] = teacher.encode_documents([texts[i] for i in missing])
            per_teacher.append(np.einsum("ij,ij->i", q[owner], emb))
        return self.combine(per_teacher)

    def mine_block(self, block):
        config, stats = self.config, self.stats
        positives = self._positives(block)
        kept_records, kept_pos = [], []
        for record, found in zip(block, positives):
            if (found < 0).any():
                stats.missing(record, skipped=config.skip_missing_positive)
                if config.skip_missing_positive:
                    continue
            kept_records.append(record)
            kept_pos.append(found)
        if not kept_records:
            return []
        texts = [r.query for r in kept_records]
        instructions = [_query_instruction(r) for r in kept_records]
        queries = [t.encode_queries(texts, instructions) for t in self.teachers]

        # positive embeddings: from the cache where the positive is in the corpus, else embedded from its text
        flat_idx = np.concatenate(kept_pos)
        owner = np.repeat(np.arange(len(kept_records)), [len(p) for p in kept_pos])
        flat_text = [t for r in kept_records for t in r.positives]
        pos_combined = self._score_texts(queries, owner, flat_idx, flat_text)

        max_pos = max(len(p) for p in kept_pos)
        k = min(config.candidates + max_pos, len(self.corpus))
        found = [s.search(q, k) for s, q in zip(self.searchers, queries)]
        if len(self.teachers) == 1:
            cand_ids, cand_scores = found[0][1], found[0][0]
        else:
            cand_ids, cand_scores = self._score_union([f[1] for f in found], queries)

        given = self._given(kept_records, queries)
        out = []
        chosen_ids: list[np.ndarray] = []
        choices = []
        start = 0
        for row, (record, pos_idx) in enumerate(zip(kept_records, kept_pos)):
            n = len(pos_idx)
            record_pos = pos_combined[start : start + n]
            start += n
            ids = cand_ids[row]
            safe = np.maximum(ids, 0)
            pos_id_hash = hash64_array(record.positive_ids or [])
            pos_text_hash = hash64_array([text_key(t) for t in record.positives])
            is_positive = (np.isin(ids, pos_idx[pos_idx >= 0]) | np.isin(self.corpus.id_hash[safe], pos_id_hash)
                           | np.isin(self.corpus.text_hash[safe], pos_text_hash))
            own = given[row]
            is_given = np.isin(self.corpus.text_hash[safe], own.text_hash) if own.texts else None
            rng = _record_rng(config.seed, record.id) if config.sample_from else None
            choice = select_negatives(ids, cand_scores[row], self.corpus.text_hash[safe], is_positive,
                                      float(record_pos.min()), config, rng,
                                      top_k=fill_count(len(own.texts), config.top_k), is_given=is_given)
            choices.append((record, record_pos, choice))
            chosen_ids.append(ids[choice.positions])
        # read every chosen negative of the block in one pass over the file, in offset order
        all_ids = np.unique(np.concatenate(chosen_ids)) if chosen_ids else np.zeros(0, dtype=np.int64)
        docs = dict(zip(all_ids.tolist(), self.corpus.read(all_ids)))
        for row, ((record, record_pos, choice), neg_idx) in enumerate(zip(choices, chosen_ids)):
            own = given[row]
            mined_scores = cand_scores[row][choice.positions]
            stats.chosen(float(record_pos.min()), mined_scores, choice, own, record)
            out.append(record.model_copy(update={
                "negatives": own.texts + [docs[int(i)][1] for i in neg_idx],
                "negative_ids": own.ids + [docs[int(i)][0] for i in neg_idx],
                "negative_scores": [round(float(s), 6) for s in (*own.scores, *mined_scores)],
                "positive_scores": [round(float(s), 6) for s in record_pos],
            }))
        stats.flush()
        return out

    def _given(self, records, queries) -> list["_Own"]:
        """Per record: the negatives it came with that it keeps (:func:`keep_given`), their corpus ids and combined
        teacher scores (from the cache where the text is in the corpus, else embedded from the text)."""
        kept = []
        for record in records:
            choice = keep_given([text_key(t) for t in record.negatives], [text_key(t) for t in record.positives])
            kept.append([record.negatives[i] for i in choice.positions])
            self.stats.given(len(record.negatives), choice)
        flat = [t for texts in kept for t in texts]
        if not flat:
            return [_Own([], [], [], np.zeros(0, dtype=np.uint64)) for _ in records]
        owner = np.repeat(np.arange(len(records)), [len(t) for t in kept])
        idx = self.corpus.find_texts(flat)
        scores = self._score_texts(queries, owner, idx, flat)
        found = self.corpus.read(np.unique(idx[idx >= 0]))
        id_of = dict(zip(np.unique(idx[idx >= 0]).tolist(), (doc_id for doc_id, _ in found)))
        out, pos = [], 0
        for record, texts in zip(records, kept):
            n = len(texts)
            ids = []
            for j, text in enumerate(texts):
                i = int(idx[pos + j])
                original = record.negatives.index(text)
                ids.append(record.negative_ids[original] if record.negative_ids
                           else id_of[i] if i >= 0 else f"{record.id}:negative:{original}")
            out.append(_Own(texts, ids, scores[pos:pos + n].tolist(), hash64_array([text_key(t) for t in texts])))
            pos += n
        return out

    def _score_union(self, per_teacher_ids: list[np.ndarray], queries: list[np.ndarray]):
        """Every teacher scores the union of all teachers' candidates; scores combined per ``config.combine``."""
        n = len(queries[0])
        union = np.concatenate(per_teacher_ids, axis=1)
        width = union.shape[1]
        ids_out = np.full((n, width), -1, dtype=np.int64)
        scores_out = np.full((n, width), -np.inf, dtype=np.float32)
        for lo in range(0, n, SCORE_BLOCK):
            hi = min(lo + SCORE_BLOCK, n)
            for row in range(lo, hi):
                uniq = np.unique(union[row][union[row] >= 0])
                ids_out[row, : len(uniq)] = uniq
            block_ids = ids_out[lo:hi]
            cols, inverse = np.unique(np.maximum(block_ids, 0), return_inverse=True)
            inverse = inverse.reshape(block_ids.shape)
            per_teacher = []
            for cache, q in zip(self.caches, queries):
                sims = q[lo:hi] @ cache.rows(cols).T  # (block, unique candidates of the block)
                per_teacher.append(np.take_along_axis(sims, inverse, axis=1))
            combined = self.combine(per_teacher)
            scores_out[lo:hi] = np.where(block_ids >= 0, combined, -np.inf)
        return ids_out, scores_out


def _local_corpus(corpus_path: str | Path, cache_dir: Path) -> Path:
    from embedpipe import storage

    if storage.is_remote(corpus_path):  # s3://: random access by byte offset needs a local copy
        return storage.local_copy(corpus_path, cache_dir / "downloads")
    return Path(corpus_path)


def embed_corpus_shard(corpus_path: str | Path, config: MiningConfig, shard: int, shards: int,
                       cache_dir: str | Path | None = None, cache_uri: str | None = None) -> dict:
    """One fan-out task of the corpus embedding: every ``shards``-th chunk from ``shard`` on, per teacher, into the
    chunk cache (shared through ``cache_uri`` on a cluster). :func:`mine_hard_negatives` on the same cache then
    embeds nothing and mines exactly what a one-process run mines."""
    t_start = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    corpus = Corpus(_local_corpus(corpus_path, cache_dir))
    teachers = [load_teacher(t, config.batch_size, config.use_gpu) for t in config.teachers]
    out = []
    for teacher in teachers:
        cache = EmbeddingCache(cache_dir, teacher, config.cache_dtype, remote=cache_uri)
        out.append({"model": teacher.config.model, **cache.ensure(corpus, config.chunk_size, shard=(shard, shards))})
    return {"shard": shard, "shards": shards, "corpus_documents": len(corpus), "teachers": out,
            "seconds": round(time.perf_counter() - t_start, 2)}


def mine_hard_negatives(
    records_path: str | Path | Iterable,
    corpus_path: str | Path | list[str | Path],
    config: MiningConfig,
    out_path: str | Path,
    cache_dir: str | Path | None = None,
    show: bool = True,
    cache_uri: str | None = None,
) -> dict:
    """Mine hard negatives for every record; write the records (negatives, their ids and scores filled) to
    ``out_path`` and return the statistics (also printed, and logged to the active MLflow run if any).

    ``records_path``: a records file (validated as it is read) or an iterable of validated
    :class:`~embedpipe.data.schema.Record` objects, streamed (the mining step's public + synthetic records).
    ``corpus_path``: one corpus file, or several mined as one corpus in that order (the data step's corpus, then the
    documents SDG wrote). A record keeps the negatives it came with; mining fills the rest up to ``top_k``.

    ``cache_uri``: the shared chunk cache of the fan-out tasks (:func:`embed_corpus_shard`); chunks they finished
    are fetched, not embedded again."""
    from embedpipe.data.schema import iter_records, write_records

    t_start = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    paths = corpus_path if isinstance(corpus_path, (list, tuple)) else [corpus_path]
    corpus = Corpus([_local_corpus(p, cache_dir) for p in paths])
    corpus_path = ", ".join(map(str, paths))
    source = records_path if isinstance(records_path, (str, Path)) else "the given records"
    t_corpus = time.perf_counter()
    teachers = [load_teacher(t, config.batch_size, config.use_gpu) for t in config.teachers]
    caches = [EmbeddingCache(cache_dir, t, config.cache_dtype, remote=cache_uri) for t in teachers]
    t_load = time.perf_counter()
    cache_stats = [c.ensure(corpus, config.chunk_size) for c in caches]
    t_embed = time.perf_counter()
    searchers = [Searcher(c, config, len(corpus)) for c in caches]
    stats = MiningStats(config.top_k)
    miner = _Miner(corpus, teachers, caches, searchers, config, stats)
    t_index = time.perf_counter()

    def mined():
        block = []
        records = iter_records(records_path) if isinstance(records_path, (str, Path)) else records_path
        for record in records:
            stats.record_in(record)
            block.append(record)
            if len(block) >= config.query_block_size:
                yield from miner.mine_block(block)
                block = []
        if block:
            yield from miner.mine_block(block)
        # raised inside the writer's loop, so a failed run leaves no (empty) output file behind
        if stats.records_in == 0:
            raise MiningError(f"records {source} has no records")
        if stats.skipped_missing_positive == stats.records_in:
            raise MiningError(
                f"none of the {stats.records_in} records of {source} has its positive in the corpus "
                f"{corpus_path} (e.g. {stats.missing_examples[:3]}); check that the records were built from this "
                "corpus, or set mining.skip_missing_positive=false to embed the positive texts")

    written = write_records(mined(), out_path)
    t_end = time.perf_counter()
    summary = stats.to_dict()
    summary.update({
        "out_path": str(out_path),
        "records_written": written,
        "corpus_documents": len(corpus),
        "corpus_duplicate_texts": corpus.duplicate_texts,
        "corpus_fingerprint": corpus.fingerprint,
        "index": searchers[0].kind,
        "gpus": gpu_count(config),
        "teachers": [{"model": t.config.model, "kind": t.kind, "dimension": t.dimension, "weight": t.weight,
                      "cache_dir": str(c.dir), **s} for t, c, s in zip(teachers, caches, cache_stats)],
        "config": config.model_dump(mode="json"),
        "seconds": {"corpus_scan": round(t_corpus - t_start, 2), "load_teachers": round(t_load - t_corpus, 2),
                    "embed_corpus": round(t_embed - t_load, 2), "build_index": round(t_index - t_embed, 2),
                    "mine": round(t_end - t_index, 2), "total": round(t_end - t_start, 2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    if show:
        print_summary(summary)
    log_to_mlflow(summary)
    return summary
