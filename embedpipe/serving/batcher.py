"""Dynamic batching: concurrent requests that arrive within a short window share one forward pass.

One worker task drains an asyncio queue; it waits up to ``max_wait_ms`` after the first request for more, up to
``max_batch_size`` texts, then runs the (blocking) encode function on a single worker thread so the event loop keeps
accepting requests. Texts are grouped by their token limit (queries and documents may differ). A failure in the
model fails the requests of that batch only; the worker keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str], int], tuple[np.ndarray, list[int]]]


class Overloaded(RuntimeError):
    """More requests are waiting than the server accepts; the client should retry later (HTTP 503)."""


@dataclass
class _Item:
    texts: list[str]
    max_length: int
    future: asyncio.Future


@dataclass
class BatcherStats:
    requests: int = 0
    texts: int = 0
    batches: int = 0
    largest_batch: int = 0
    failures: int = 0
    encode_seconds: float = 0.0
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("requests", "texts", "batches", "largest_batch", "failures",
                                             "encode_seconds")}


class DynamicBatcher:
    """Collects ``submit`` calls into batches for ``encode_fn(texts, max_length) -> (vectors, token_counts)``."""

    def __init__(self, encode_fn: EncodeFn, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_pending: int = 1024):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.encode_fn = encode_fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_pending = max_pending
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedpipe-encode")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="embedpipe-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, texts: list[str], max_length: int) -> tuple[np.ndarray, list[int]]:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self._queue.qsize() >= self.max_pending:
            raise Overloaded(f"{self._queue.qsize()} requests are already waiting (limit {self.max_pending})")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(texts, max_length, future))
        self.stats.requests += 1
        return await future

    async def _collect(self) -> list[_Item]:
        first = await self._queue.get()
        items, count = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(
                    self._queue.get(), remaining)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item)
            count += len(item.texts)
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            items = [it for it in items if not it.future.cancelled()]  # client went away while queued
            groups: dict[int, list[_Item]] = {}
            for item in items:
                groups.setdefault(item.max_length, []).append(item)
            for max_length, group in groups.items():
                texts = [t for it in group for t in it.texts]
                started = time.perf_counter()
                try:
                    vectors, counts = await loop.run_in_executor(self._executor, self.encode_fn, texts, max_length)
                except Exception as err:  # the model failed: fail this batch's requests, keep serving
                    log.exception("encoding a batch of %d texts failed", len(texts))
                    self.stats.failures += 1
                    for it in group:
                        if not it.future.done():
                            it.future.set_exception(err)
                    continue
                self.stats.encode_seconds += time.perf_counter() - started
                self.stats.batches += 1
                self.stats.texts += len(texts)
                self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
                start = 0
                for it in group:
                    end = start + len(it.texts)
                    if not it.future.done():
                        it.future.set_result((vectors[start:end], counts[start:end]))
                    start = end
