"""Serving overhead: requests/s and p50/p99 latency of `embedpipe serve` under concurrent load on loopback, against
calling the encoder in-process with the same texts and the same concurrency. Bounded in count and time.

    HF_HUB_OFFLINE=1 python benchmarks/bench_serving.py [--model smollm2|tiny] [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import tempfile
import threading
import time

import httpx
import numpy as np


def percentile(values, q):
    return float(np.percentile(np.array(values) * 1000, q))


def run_load(call, n: int, concurrency: int, deadline_s: float) -> dict:
    latencies: list[float] = []
    stop = time.monotonic() + deadline_s

    def one(i):
        if time.monotonic() > stop:
            return None
        t0 = time.perf_counter()
        call(i)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        latencies = [x for x in pool.map(one, range(n)) if x is not None]
    wall = time.perf_counter() - t0
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "mean_ms": statistics.mean(latencies) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()

    from embedpipe.encoder import Encoder
    from embedpipe.encoder.convert import convert_checkpoint, ensure_base_checkpoint, random_tiny_llama
    from embedpipe.serving.app import ServeConfig, create_app
    from embedpipe.serving.background import BackgroundServer

    work = tempfile.mkdtemp()
    source = ensure_base_checkpoint() if args.model == "smollm2" else random_tiny_llama(f"{work}/tiny")
    export = convert_checkpoint(source, f"{work}/encoder", max_length=128)
    encoder = Encoder.from_pretrained(export, device="cpu")
    texts = [f"How does the {w} statement work in Python, and when should I use it? ({i})"
             for i, w in enumerate(["with", "for", "while", "try", "import", "yield", "async", "match"] * 64)]
    k = args.texts_per_request
    batch = lambda i: [texts[(i * k + j) % len(texts)] for j in range(k)]  # noqa: E731
    encoder.encode(batch(0))  # warm up

    lock = threading.Lock()  # one model: in-process callers take turns, as the server's single worker does

    def in_process(i):
        with lock:
            encoder.encode(batch(i))

    direct = run_load(in_process, args.requests, args.concurrency, args.max_seconds)
    config = ServeConfig(model_name="bench", max_batch_size=32, max_wait_ms=5)
    with BackgroundServer(create_app(encoder, config)) as url:
        client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=args.concurrency * 2))
        client.post(f"{url}/v1/embeddings", json={"input": batch(0)}).raise_for_status()

        def over_http(i):
            client.post(f"{url}/v1/embeddings", json={"input": batch(i)}).raise_for_status()

        served = run_load(over_http, args.requests, args.concurrency, args.max_seconds)
        stats = httpx.get(f"{url}/health").json()["batching"]
    print(f"model={args.model} dim={encoder.dimension} requests={args.requests} concurrency={args.concurrency} "
          f"texts/request={k}")
    print(f"{'':22}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'n':>6}")
    for name, r in [("in-process encode", direct), ("HTTP /v1/embeddings", served)]:
        print(f"{name:22}{r['rps']:9.1f}{r['p50_ms']:10.1f}{r['p99_ms']:10.1f}{r['requests']:6d}")
    print(f"server/in-process throughput ratio: {served['rps'] / direct['rps']:.2f}x; "
          f"p50 latency ratio: {served['p50_ms'] / direct['p50_ms']:.2f}x; "
          f"server batches: {stats['batches']} for {stats['requests']} requests (largest {stats['largest_batch']})")


if __name__ == "__main__":
    main()
