"""Hard-negative mining (issue 4): ``embedpipe.mining.mine.mine_hard_negatives(records, corpus, config, out, cache_dir)``
(records: a file or an iterable of records; corpus: a file or a list of files).

- teachers.py: sentence-transformers models (prompts; ``{instruction}`` in a query prompt takes each record's
  instruction) or embedpipe encoder exports (``embedpipe.json``), in fp32/bf16/fp16.
- corpus.py: one validating scan of the ``{"id","text"}`` JSONL (or several files mined as one corpus: the data
  step's, then the documents SDG wrote); per document only offset + id/text hashes in memory.
- cache.py: per-chunk ``.npy`` corpus embeddings (fp16), resumable, refused if written by another model.
- search.py: FAISS exact inner product chunk by chunk (ResultHeap), IVF/HNSW (fp16 SQ) above ``ann_threshold``,
  GPU FAISS when present.
- select.py: TopK-PercPos: positives (by id and identical text) and repeated texts excluded, score < pos - |pos|(1-m);
  a record's own negatives kept first (source order) and mining fills the rest up to ``top_k``.
- stats.py: counts and score distributions in constant memory; rich tables; metrics to the active MLflow run.

Missing positives: ``skip_missing_positive=true`` (default) counts and drops such records (an error if all are);
``false`` embeds the positive text and mines for it anyway.
"""
