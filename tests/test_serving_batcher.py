"""The dynamic batcher alone: windows merge requests, a failing model fails one batch only, overload is refused."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedpipe.serving.batcher import DynamicBatcher, Overloaded


def lengths(texts: list[str], max_length: int):
    """A deterministic stand-in model: one row per text, [len(text), max_length]."""
    return np.array([[len(t), max_length] for t in texts], dtype=np.float32), [len(t) for t in texts]


def run(coro):
    return asyncio.run(coro)


def test_requests_in_one_window_share_a_batch_and_get_their_own_rows():
    async def main():
        calls = []

        def encode(texts, max_length):
            calls.append(list(texts))
            return lengths(texts, max_length)

        batcher = DynamicBatcher(encode, max_batch_size=64, max_wait_ms=100)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(["x" * (i + 1)] * (i % 3 + 1), 16) for i in range(10)))
        await batcher.stop()
        return calls, results, batcher.stats

    calls, results, stats = run(main())
    assert len(calls) < 10 and stats.batches == len(calls) and stats.requests == 10
    for i, (vectors, counts) in enumerate(results):
        assert vectors.shape == (i % 3 + 1, 2)
        assert (vectors[:, 0] == i + 1).all() and counts == [i + 1] * (i % 3 + 1)


def test_texts_with_different_token_limits_are_encoded_separately():
    async def main():
        seen = []

        def encode(texts, max_length):
            seen.append(max_length)
            return lengths(texts, max_length)

        batcher = DynamicBatcher(encode, max_batch_size=64, max_wait_ms=100)
        await batcher.start()
        q, d = await asyncio.gather(batcher.submit(["query"], 32), batcher.submit(["document"], 128))
        await batcher.stop()
        return seen, q, d

    seen, q, d = run(main())
    assert sorted(seen) == [32, 128]
    assert q[0][0, 1] == 32 and d[0][0, 1] == 128


def test_a_failing_batch_fails_its_requests_and_the_worker_keeps_going():
    async def main():
        def encode(texts, max_length):
            if any("boom" in t for t in texts):
                raise RuntimeError("CUDA error: out of memory")
            return lengths(texts, max_length)

        batcher = DynamicBatcher(encode, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        with pytest.raises(RuntimeError, match="out of memory"):
            await batcher.submit(["boom"], 8)
        ok = await batcher.submit(["fine"], 8)
        await batcher.stop()
        return ok, batcher.stats

    ok, stats = run(main())
    assert ok[1] == [4] and stats.failures == 1 and stats.batches == 1


def test_overload_is_refused_and_bad_settings_are_errors():
    async def main():
        def encode(texts, max_length):
            return lengths(texts, max_length)

        batcher = DynamicBatcher(encode, max_batch_size=1, max_wait_ms=0, max_pending=2)
        batcher._queue = asyncio.Queue()  # a queue with no worker draining it: requests pile up
        pending = [asyncio.create_task(batcher.submit(["a"], 8)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit 2"):
            await batcher.submit(["b"], 8)
        for task in pending:
            task.cancel()

    run(main())
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(lengths, max_batch_size=0)
