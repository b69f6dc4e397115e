"""Nearest-neighbour search over the cached corpus embeddings with FAISS.

Exact (default below ``ann_threshold``): brute-force inner product chunk by chunk (``faiss.knn``, BLAS), merged with
``faiss.ResultHeap``; memory is one chunk in float32 plus the query block, whatever the corpus size.
IVF / HNSW (above ``ann_threshold`` or by choice): one index with fp16 scalar-quantised vectors (2 bytes per dimension
per document in memory), filled chunk by chunk. GPU FAISS is used when the installed FAISS sees a GPU.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from embedpipe.mining.cache import EmbeddingCache
from embedpipe.mining.config import MiningConfig

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # FAISS GPU's limit on neighbours per query


def index_kind(config: MiningConfig, n_docs: int) -> str:
    if config.index != "auto":
        return config.index
    return "flat" if n_docs < config.ann_threshold else "ivf"


def gpu_count(config: MiningConfig) -> int:
    if config.use_gpu == "never":
        return 0
    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


class Searcher:
    """``search(queries, k) -> (scores, corpus indices)``, best first; index -1 pads when the corpus is smaller."""

    def __init__(self, cache: EmbeddingCache, config: MiningConfig, n_docs: int):
        self.cache = cache
        self.n_docs = n_docs
        self.kind = index_kind(config, n_docs)
        self.gpus = gpu_count(config)
        self.index = None
        self._gpu_resources = None
        if self.kind in ("ivf", "hnsw"):
            self.index = self._build(config)
        elif self.gpus:
            self._gpu_resources = faiss.StandardGpuResources()

    def _sample(self, size: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(self.n_docs, size=min(size, self.n_docs), replace=False))
        return np.ascontiguousarray(self.cache.rows(picks))

    def _build(self, config: MiningConfig):
        dim = self.cache.teacher.dimension
        fp16 = faiss.ScalarQuantizer.QT_fp16
        if self.kind == "ivf":
            nlist = config.ivf_nlist or max(1, int(4 * math.sqrt(self.n_docs)))
            nlist = max(1, min(nlist, self.n_docs // 39 or 1))  # FAISS wants >= 39 training points per list
            self._quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFScalarQuantizer(self._quantizer, dim, nlist, fp16, faiss.METRIC_INNER_PRODUCT)
            index.train(self._sample(nlist * 64, config.seed))
            index.nprobe = min(config.ivf_nprobe, nlist)
        else:
            index = faiss.IndexHNSWSQ(dim, fp16, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.train(self._sample(4096, config.seed))
            index.hnsw.efSearch = config.hnsw_ef_search
        for i in range(len(self.cache.bounds)):
            index.add(np.ascontiguousarray(self.cache.chunk(i), dtype=np.float32))
        if self.gpus and self.kind == "ivf":
            index = faiss.index_cpu_to_all_gpus(index)
        log.info("built a %s index over %d documents", self.kind, index.ntotal)
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.index is not None:
            if self.kind == "hnsw":
                self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, k)
            _, ids = self.index.search(queries, k)
            return self._rescore(queries, ids.astype(np.int64))
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        for i, (start, stop) in enumerate(self.cache.bounds):
            block = np.ascontiguousarray(self.cache.chunk(i), dtype=np.float32)
            kk = min(k, stop - start)
            if self._gpu_resources is not None and kk <= GPU_MAX_K:
                scores, ids = faiss.knn_gpu(self._gpu_resources, queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
            else:
                scores, ids = faiss.knn(queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, np.where(ids >= 0, ids + start, -1))
        heap.finalize()
        return heap.D, heap.I

    def _rescore(self, queries: np.ndarray, ids: np.ndarray, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores (from the cached vectors, as the exact search computes them) for ANN candidates, re-sorted."""
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        for lo in range(0, len(ids), block):
            sub = ids[lo : lo + block]
            vectors = self.cache.rows(np.maximum(sub, 0).ravel()).reshape(*sub.shape, -1)
            sims = np.einsum("qkd,qd->qk", vectors, queries[lo : lo + block])
            scores[lo : lo + block] = np.where(sub >= 0, sims, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
