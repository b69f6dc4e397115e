"""Synthetic data generation throughput (records/s) per backend that runs here, against a reference in the same run.

- transformers (SmolLM2-135M-Instruct, CPU): embedpipe's SDG (batched, chat template, stop at end of line, parsing,
  shards) vs the reference ``transformers.pipeline("text-generation")`` on the same chat prompts, one at a time.
- openai (an OpenAI-compatible server on 127.0.0.1, in its own process, answering after ``--latency-ms`` like a
  served model would): embedpipe's SDG (``batch_size`` requests in flight, parsing, shards) vs the reference plain
  ``openai`` client loop over the same prompts. This measures the SDG machinery and its concurrency, not a model.

    HF_HUB_OFFLINE=1 python benchmarks/bench_sdg.py [--n 16] [--max-new-tokens 48] [--threads 1] [--n-openai 400]
                                                    [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _recipe(tmp: Path, sdg: dict):
    import yaml

    from embedpipe.recipe import load_recipe

    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": "bench", "model": {"base": "smollm2-135m-instruct"},
                                    "data": {"sources": [{"name": "synthetic", "kind": "synthetic"}]}, "sdg": sdg}))
    return load_recipe(path)


def _corpus(tmp: Path, n: int) -> Path:
    from embedpipe.data.config import SourceConfig
    from embedpipe.data.pydoc_source import load_pydoc

    docs = list(load_pydoc(SourceConfig(name="pydoc", kind="pydoc")).training.documents.items())[:n]
    path = tmp / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in docs) + "\n")
    return path


def bench_transformers(tmp: Path, n: int, max_new_tokens: int, threads: int) -> dict:
    import torch
    from transformers import pipeline

    from embedpipe.data.sdg import generate_synthetic, load_seed_corpus, plan, render
    from embedpipe.encoder.convert import ensure_base_checkpoint

    sdg = {"tasks": ["query_generation"], "records_per_task": n, "shard_size": n, "consistency_top_k": None,
           "max_prompt_document_chars": 600,
           "generators": [{"name": "smollm2", "backend": "transformers", "model": "smollm2-135m-instruct",
                           "temperature": 0.7, "max_new_tokens": max_new_tokens, "batch_size": 16, "threads": threads}]}
    recipe = _recipe(tmp, sdg)
    corpus_path = _corpus(tmp, n)
    base = ensure_base_checkpoint()
    started = time.perf_counter()
    summary = generate_synthetic(recipe.sdg, corpus_path, tmp / "sdg-transformers")
    ours = time.perf_counter() - started

    prompts = [render("query_generation", **item.params) for shard in plan(recipe.sdg, load_seed_corpus(recipe.sdg, corpus_path))
               for item in shard.items]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    generator = pipeline("text-generation", model=str(base), device="cpu")
    started = time.perf_counter()
    outputs = [generator([{"role": "user", "content": p}], max_new_tokens=max_new_tokens, do_sample=True,
                         temperature=0.7, top_p=0.95) for p in prompts]
    reference = time.perf_counter() - started
    torch.set_num_threads(previous)
    return {"backend": "transformers (SmolLM2-135M, CPU)", "items": n, "records": summary["records"],
            "parsed": summary["parsed"], "seconds": round(ours, 2), "records_per_s": round(summary["records"] / ours, 3),
            "items_per_s": round(n / ours, 3), "reference": "transformers.pipeline, one prompt at a time",
            "reference_seconds": round(reference, 2), "reference_items_per_s": round(len(outputs) / reference, 3),
            "speedup": round(reference / ours, 2)}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    latency = 0.0

    def do_POST(self):  # noqa: N802
        time.sleep(self.latency)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        passage = prompt.split("Passage:", 1)[-1].split()
        content = "What does the documentation say about " + " ".join(passage[:8]) + "?"
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _serve(port_queue, latency: float) -> None:
    _Handler.latency = latency
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def bench_openai(tmp: Path, n: int, latency_ms: float) -> dict:
    import multiprocessing

    from openai import OpenAI

    from embedpipe.data.sdg import generate_synthetic, load_seed_corpus, plan, render

    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_serve, args=(ports, latency_ms / 1000), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=60)}/v1"
    try:
        sdg = {"tasks": ["query_generation"], "records_per_task": n, "shard_size": 64, "consistency_top_k": None,
               "generators": [{"name": "srv", "backend": "openai", "model": "m", "base_url": url, "batch_size": 8}]}
        recipe = _recipe(tmp, sdg)
        corpus_path = _corpus(tmp, 10_000)
        started = time.perf_counter()
        summary = generate_synthetic(recipe.sdg, corpus_path, tmp / "sdg-openai")
        ours = time.perf_counter() - started
        prompts = [render("query_generation", **item.params)
                   for shard in plan(recipe.sdg, load_seed_corpus(recipe.sdg, corpus_path)) for item in shard.items]
        client = OpenAI(base_url=url, api_key="EMPTY")
        started = time.perf_counter()
        texts = [client.chat.completions.create(model="m", messages=[{"role": "user", "content": p}], max_tokens=64)
                 .choices[0].message.content for p in prompts]
        reference = time.perf_counter() - started
    finally:
        server.terminate()
        server.join()
    return {"backend": f"openai (local server, {latency_ms:g} ms/answer)", "items": n, "records": summary["records"],
            "seconds": round(ours, 2), "records_per_s": round(summary["records"] / ours, 1),
            "reference": "plain openai client loop", "reference_seconds": round(reference, 2),
            "reference_items_per_s": round(len(texts) / reference, 1), "speedup": round(reference / ours, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16, help="query-generation items for the transformers backend")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-openai", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_openai(Path(tmp), args.n_openai, args.latency_ms),
                bench_transformers(Path(tmp), args.n, args.max_new_tokens, args.threads)]
    for row in rows:
        print(json.dumps(row))
    print(f"{'backend':36} {'items':>6} {'records/s':>10} {'ref items/s':>12} {'speedup':>8}")
    for row in rows:
        print(f"{row['backend']:36} {row['items']:>6} {row['records_per_s']:>10} {row['reference_items_per_s']:>12} "
              f"{row['speedup']:>8}")


if __name__ == "__main__":
    main()
