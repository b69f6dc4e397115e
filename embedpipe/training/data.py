"""Training examples from records: formatted texts, tokenised once, a seeded order that is a pure function of the
step (so a resumed run sees exactly the batches the interrupted one would have), and length-sorted micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from embedpipe.encoder.instructions import default_instruction, format_document, format_query, is_uni_encoder

SYMMETRIC_TYPES = {"sts", "bitext", "pair_classification", "summarization"}  # query and positive interchangeable


class TrainingDataError(ValueError):
    """Records that cannot train this stage; the message names the file and the record."""


@dataclass
class Examples:
    """Tokenised examples: each row is (query ids, positive ids, k negative ids) plus text keys and flags."""

    query_ids: list[list[int]]
    doc_ids: list[list[list[int]]]  # per row: [positive, neg_1 .. neg_k]
    query_texts: list[str]
    doc_texts: list[list[str]]
    symmetric: list[bool]
    record_ids: list[str]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.query_ids)

    def tokens(self, row: int) -> int:
        return len(self.query_ids[row]) + sum(len(d) for d in self.doc_ids[row])


def build_examples(records: Sequence, tokenizer, hard_negatives: int, max_query_length: int,
                   max_document_length: int, source: str = "records") -> Examples:
    """Format and tokenise; a record with fewer hard negatives than the stage needs is an error before any step."""
    short = [(i, r) for i, r in enumerate(records) if len(r.negatives) < hard_negatives]
    if short:
        i, r = short[0]
        raise TrainingDataError(
            f"{source}: record {r.id!r} (#{i + 1}) has {len(r.negatives)} hard negative(s), the stage needs "
            f"{hard_negatives}; {len(short)} of {len(records)} records are short (mine more negatives, or lower "
            f"training.<stage>.hard_negatives)"
        )
    if not records:
        raise TrainingDataError(f"{source}: no records for this stage")
    queries, docs, symmetric, ids = [], [], [], []
    for i, r in enumerate(records):
        texts = [r.query, r.positives[0], *r.negatives[:hard_negatives]]
        for j, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                field = "query" if j == 0 else "positives[0]" if j == 1 else f"negatives[{j - 2}]"
                raise TrainingDataError(f"{source}: record {r.id!r} (#{i + 1}): field {field} is empty")
        instruction = r.instruction or default_instruction(r.task_type)
        queries.append(format_query(r.query, instruction))
        docs.append([format_document(t, instruction, r.task_type) for t in texts[1:]])
        symmetric.append(r.task_type in SYMMETRIC_TYPES and is_uni_encoder(r.task_type))
        ids.append(r.id)
    truncated = 0

    def tok(texts: list[str], limit: int) -> list[list[int]]:
        nonlocal truncated
        out = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        truncated += sum(len(x) > limit for x in out)
        return [x[:limit] for x in out]

    query_ids = tok(queries, max_query_length)
    flat = tok([d for row in docs for d in row], max_document_length)
    per = hard_negatives + 1
    doc_ids = [flat[i * per:(i + 1) * per] for i in range(len(docs))]
    return Examples(query_ids, doc_ids, queries, docs, symmetric, ids, truncated)


def step_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The example indices of global ``step``: consecutive slices of seeded per-epoch permutations.

    A pure function of (n, batch size, step, seed): resuming at step N needs no sampler state.
    """
    out: list[int] = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(batch_size - len(out), n - offset)
        out.extend(int(i) for i in perm[offset:offset + take])
    return out


def device_micro_batches(examples: Examples, indices: list[int], rank: int, world_size: int,
                         micro_batch_size: int) -> list[list[int]]:
    """Sort the global batch by length, give each device a contiguous slice (similar lengths on every device) and
    cut that slice into micro-batches of similar length: little padding, same records per step as unsorted."""
    ordered = sorted(indices, key=lambda i: (examples.tokens(i), i))
    per_device = len(ordered) // world_size
    mine = ordered[rank * per_device:(rank + 1) * per_device]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def packed_chunks(ids: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Group sequence indices, sorted by length, into chunks whose padded size (count x longest) stays within
    ``max_tokens``: each chunk pads only to its own longest text."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * len(ids[i]) > max_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks
