"""Throughput of embedpipe's batched ``Encoder.encode`` against ``SentenceTransformer(dir).encode``.

Same exported SmolLM2-135M encoder, the same 2,000 texts of mixed lengths (paragraphs of Python's own docs), the same
batch size and maximum length; checks the vectors agree and prints texts/s for both and the ratio. ``--bf16``
also encodes under bf16 autocast over the fp32 weights (``evaluation.precision: auto`` on a CPU with native bf16) and
prints its throughput against embedpipe's fp32 and the lowest cosine between the two vectors of a text.

    python benchmarks/bench_encode.py [--n 2000] [--batch-size 32] [--max-length 256] [--bf16]
    python benchmarks/bench_encode.py --n 651 --batch-size 16 --max-length 96 --bf16 --model-dir <merged export>
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pydoc_texts(n: int, seed: int = 0) -> list[str]:
    """n texts of mixed lengths: paragraphs and sentence windows of pydoc topics."""
    from pydoc_data.topics import topics

    paragraphs = [p.strip() for text in topics.values() for p in text.split("\n\n") if len(p.strip()) > 20]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paragraphs), size=n, replace=len(paragraphs) < n)
    out = []
    for i in picks:
        words = paragraphs[i].split()
        keep = int(rng.integers(3, max(4, min(len(words), 200))))
        out.append(" ".join(words[:keep]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--model-dir", default=None, help="an encoder export; default: convert SmolLM2 into a temp dir")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast against embedpipe's fp32")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from embedpipe.encoder import Encoder
    from embedpipe.encoder.convert import convert_checkpoint

    model_dir = args.model_dir or str(convert_checkpoint("smollm2-135m-instruct", tempfile.mkdtemp(), args.max_length))
    texts = pydoc_texts(args.n)
    print(f"{len(texts)} texts, mean {np.mean([len(t) for t in texts]):.0f} chars; torch threads {torch.get_num_threads()}")

    ours = Encoder.from_pretrained(model_dir, device="cpu", max_length=args.max_length)
    st = SentenceTransformer(model_dir, trust_remote_code=True, device="cpu")
    st.max_seq_length = args.max_length
    ours.encode(texts[:64], batch_size=args.batch_size)  # warm-up both
    st.encode(texts[:64], batch_size=args.batch_size)

    results = {}
    for name, fn in (
        ("sentence-transformers", lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)),
        ("embedpipe", lambda: ours.encode(texts, batch_size=args.batch_size)),
    ):
        start = time.perf_counter()
        vectors = fn()
        seconds = time.perf_counter() - start
        results[name] = (vectors, seconds)
        print(f"{name:>22}: {seconds:7.1f} s  {len(texts) / seconds:7.1f} texts/s")
    diff = float(np.abs(results["embedpipe"][0] - results["sentence-transformers"][0]).max())
    ratio = results["sentence-transformers"][1] / results["embedpipe"][1]
    print(f"max |difference| between the vectors: {diff:.2e}")
    print(f"throughput ratio embedpipe / sentence-transformers: {ratio:.2f}x (target >= 1.2x)")
    if args.bf16:
        from embedpipe.encoder.encoder import cpu_has_native_bf16

        ours.autocast_bf16 = True
        start = time.perf_counter()
        vectors = ours.encode(texts, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        cosines = (vectors * results["embedpipe"][0]).sum(1)
        print(f"{'embedpipe bf16 autocast':>22}: {seconds:7.1f} s  {len(texts) / seconds:7.1f} texts/s "
              f"(native bf16: {cpu_has_native_bf16()})")
        low, p5, median = np.percentile(cosines, [0, 5, 50])
        short = float(np.mean([len(ours.tokenizer(t)["input_ids"]) for t in np.array(texts)[np.argsort(cosines)[:10]]]))
        print(f"throughput ratio bf16 autocast / fp32: {results['embedpipe'][1] / seconds:.2f}x; cosine to the fp32 "
              f"vector: lowest {low:.4f}, 5th percentile {p5:.4f}, median {median:.4f} (the 10 lowest: "
              f"{short:.1f} tokens on average)")


if __name__ == "__main__":
    main()
