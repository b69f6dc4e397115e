"""Batching: a data order that is a pure function of the step, length-sorted micro-batches and packed forwards."""

from __future__ import annotations

import pytest

from embedpipe.data.schema import Record
from embedpipe.training.data import (Examples, build_examples, device_micro_batches, packed_chunks, step_indices)


def test_step_indices_are_a_pure_function_of_the_step_and_cover_each_epoch():
    n, b = 10, 4
    steps = [step_indices(n, b, s, seed=7) for s in range(5)]
    assert steps[3] == step_indices(n, b, 3, seed=7)  # resuming at step 3 needs no sampler state
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs, no repeats
    assert steps[0] != step_indices(n, b, 0, seed=8)


def _examples(lengths: list[int]) -> Examples:
    return Examples([[1] * n for n in lengths], [[[1] * n, [1] * n] for n in lengths], [str(i) for i in lengths],
                    [["p", "n"] for _ in lengths], [False] * len(lengths), [str(i) for i in range(len(lengths))])


def test_micro_batches_group_similar_lengths_and_split_evenly_over_devices():
    ex = _examples([5, 100, 6, 90, 7, 95, 8, 99])
    batch = list(range(8))
    short = device_micro_batches(ex, batch, rank=0, world_size=2, micro_batch_size=2)
    long = device_micro_batches(ex, batch, rank=1, world_size=2, micro_batch_size=2)
    assert sorted(i for mb in short + long for i in mb) == batch
    assert all(ex.query_ids[i].__len__() < 10 for mb in short for i in mb)
    assert all(ex.query_ids[i].__len__() >= 90 for mb in long for i in mb)


def test_packed_chunks_bound_padded_tokens_and_waste_little():
    lengths = [3, 120, 5, 118, 4, 7, 119, 6]
    ids = [[1] * n for n in lengths]
    chunks = packed_chunks(ids, max_tokens=256)
    assert sorted(i for c in chunks for i in c) == list(range(8))
    for chunk in chunks:
        assert len(chunk) * max(lengths[i] for i in chunk) <= 256
    padded = sum(len(c) * max(lengths[i] for i in c) for c in chunks)
    assert padded < 0.7 * len(lengths) * max(lengths)  # one padded batch would be 8 x 120


def test_build_examples_formats_by_task_type_and_flags_symmetric_records(tiny_encoder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_encoder))
    records = [Record(id="r", task_type="retrieval", instruction="Find it", query="q", positives=["doc"],
                      negatives=["n1", "n2"]),
               Record(id="s", task_type="sts", query="a cat sits", positives=["a cat is sitting"], negatives=["dog"])]
    ex = build_examples(records, tok, 1, 32, 32)
    assert ex.query_texts[0] == "Instruct: Find it\nQuery: q" and ex.doc_texts[0] == ["doc", "n1"]
    assert ex.doc_texts[1][0].startswith("Instruct: ") and ex.symmetric == [False, True]
    assert len(ex.doc_ids[0]) == 2
    with pytest.raises(ValueError, match="record 's' \\(#2\\) has 1 hard negative"):
        build_examples(records, tok, 2, 32, 32)
