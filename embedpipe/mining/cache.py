"""Corpus embeddings cached on disk, one ``.npy`` file per chunk (fp16 by default), resumable.

Layout: ``<cache_dir>/<teacher key>/manifest.json`` (teacher identity, weight fingerprint, dimension) and
``chunk-000000.npy`` + ``chunk-000000.json`` (document range and content hash). A chunk counts as done only when its
``.json`` exists, written after the ``.npy`` is renamed into place, so an interrupted run re-embeds only the chunk it
was on. A cache written by other weights at the same path (another dimension, or weight files of other names, sizes or
modification times: a new model saved there, a reinstalled package) is discarded with a warning and embedded anew,
never mixed in; a chunk whose own shape disagrees with its teacher is an error.

Fan-out: ``ensure(..., shard=(i, n))`` embeds only every n-th chunk (one GPU task each); with ``remote`` (an s3://
prefix, e.g. under the artifact root) every finished chunk is uploaded (``.npy`` first, its ``.json`` last) and a
chunk missing locally is fetched from there, so the tasks share one cache and the search step reads all of it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from embedpipe.mining.corpus import Corpus
from embedpipe.mining.teachers import Teacher

log = logging.getLogger(__name__)

DTYPES = {"fp16": np.float16, "fp32": np.float32}


class CacheMismatch(ValueError):
    """The cache on disk was written by a different teacher than the one now configured."""


class EmbeddingCache:
    def __init__(self, root: str | Path, teacher: Teacher, dtype: str = "fp16", remote: str | None = None):
        from embedpipe import storage

        self.teacher = teacher
        self.remote = storage.join(remote, teacher.key) if remote else None
        self.dtype = dtype
        self.dir = Path(root) / teacher.key
        self.dir.mkdir(parents=True, exist_ok=True)
        self._mmaps: dict[int, np.ndarray] = {}
        self.bounds: list[tuple[int, int]] = []
        manifest = self.dir / "manifest.json"
        current = {"identity": teacher.identity, "fingerprint": teacher.fingerprint, "dimension": teacher.dimension}
        saved = json.loads(manifest.read_text()) if manifest.is_file() else None
        stale = saved is not None and (saved.get("dimension"), saved.get("fingerprint")) != (
            teacher.dimension, current["fingerprint"])
        self.discarded = 0
        if stale:
            chunks = sorted(self.dir.glob("chunk-*.npy"))
            log.warning("embedding cache %s was written by other weights at %s (dimension %s, fingerprint %s; now %s, "
                        "%s): its %d chunks are discarded and the corpus embedded anew", self.dir, teacher.path,
                        saved.get("dimension"), saved.get("fingerprint"), teacher.dimension, current["fingerprint"],
                        len(chunks))
            for path in self.dir.glob("chunk-*"):
                path.unlink()
            self.discarded = len(chunks)
        if saved is None or stale:
            manifest.write_text(json.dumps(current, indent=2))

    def _paths(self, i: int) -> tuple[Path, Path]:
        return self.dir / f"chunk-{i:06d}.npy", self.dir / f"chunk-{i:06d}.json"

    def _remote_uri(self, path: Path) -> str:
        from embedpipe import storage

        return storage.join(self.remote, path.name)

    def _fetch(self, i: int) -> None:
        """Chunk ``i`` from the shared cache, if another task finished it (its ``.json`` is the completion mark)."""
        from embedpipe import storage

        data, meta = self._paths(i)
        if not self.remote or (data.is_file() and meta.is_file()) or not storage.is_complete(self._remote_uri(meta)):
            return
        storage.download(self._remote_uri(data), data)
        storage.download(self._remote_uri(meta), meta)

    def _share(self, i: int) -> None:
        from embedpipe import storage

        if self.remote:
            data, meta = self._paths(i)
            storage.upload(data, self._remote_uri(data))
            storage.upload(meta, self._remote_uri(meta))

    def _valid(self, i: int, start: int, stop: int, content: str) -> bool:
        data, meta = self._paths(i)
        self._fetch(i)
        if not (data.is_file() and meta.is_file()):
            return False
        saved = json.loads(meta.read_text())
        if saved.get("dimension") != self.teacher.dimension:
            raise CacheMismatch(
                f"cached chunk {data} has dimension {saved.get('dimension')} but teacher {self.teacher.config.model!r} "
                f"has dimension {self.teacher.dimension}; delete {self.dir} or use another cache_dir")
        if (saved.get("start"), saved.get("stop"), saved.get("content"), saved.get("dtype")) != (
                start, stop, content, self.dtype):
            return False  # the corpus or the chunking changed: re-embed this chunk
        shape = np.load(data, mmap_mode="r").shape
        if shape != (stop - start, self.teacher.dimension):
            raise CacheMismatch(f"cached chunk {data} has shape {shape}, expected {(stop - start, self.teacher.dimension)}")
        return True

    def ensure(self, corpus: Corpus, chunk_size: int, progress=None, shard: tuple[int, int] | None = None) -> dict:
        """Embed every chunk not already cached (with ``shard=(i, n)``: only chunks ``i, i+n, ...``); returns counts
        of embedded and reused chunks and the time spent."""
        embedded = reused = 0
        seconds = 0.0
        self.bounds = list(corpus.chunks(chunk_size))
        self._mmaps.clear()
        if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            raise ValueError(f"embedding shard {shard[0]} of {shard[1]}: the index must be in [0, {shard[1]})")
        for i, (start, stop) in enumerate(self.bounds):
            if shard is not None and i % shard[1] != shard[0]:
                continue
            content = corpus.chunk_hash(start, stop)
            if self._valid(i, start, stop, content):
                reused += 1
            else:
                t0 = time.perf_counter()
                _, texts = corpus.chunk(start, stop)
                vectors = self.teacher.encode_documents(texts).astype(DTYPES[self.dtype])
                data, meta = self._paths(i)
                partial = data.with_name(data.stem + ".partial.npy")
                np.save(partial, vectors)
                os.replace(partial, data)
                meta.write_text(json.dumps({"start": start, "stop": stop, "content": content, "dtype": self.dtype,
                                            "dimension": self.teacher.dimension}))
                self._share(i)
                seconds += time.perf_counter() - t0
                embedded += 1
            if progress is not None:
                progress(stop - start)
        log.info("%s: %d chunks embedded, %d reused from %s", self.teacher.config.model, embedded, reused, self.dir)
        return {"chunks": len(self.bounds), "embedded": embedded, "reused": reused, "embed_seconds": round(seconds, 3),
                **({"discarded_stale": self.discarded} if self.discarded else {}),
                **({"shard": list(shard)} if shard is not None else {})}

    def chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` memory-mapped (no copy; the OS pages it in and out)."""
        if i not in self._mmaps:
            self._mmaps[i] = np.load(self._paths(i)[0], mmap_mode="r")
        return self._mmaps[i]

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """float32 embeddings of the given corpus indices, gathered chunk by chunk."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.teacher.dimension), dtype=np.float32)
        if not len(indices):
            return out
        size = self.bounds[0][1] - self.bounds[0][0]
        which = indices // size
        for c in np.unique(which):
            sel = np.nonzero(which == c)[0]
            out[sel] = self.chunk(int(c))[indices[sel] - c * size]
        return out
