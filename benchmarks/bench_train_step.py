"""One training step of our trainer vs sentence-transformers' MultipleNegativesRankingLoss on the same model, batch
and lengths (CPU). MNRL also scores in-batch candidates, so only step time is compared, not the loss.

    python benchmarks/bench_train_step.py --batch 16 --steps 3
    python benchmarks/bench_train_step.py --mfu --shape llama-3.2-1b --batch 32 --steps 5   # on a GPU: tokens/s, MFU

Both sides: SmolLM2-135M made bidirectional (the same encoder export, loaded by sentence-transformers through its
modules.json), (instructed query, positive, 1 hard negative) triples from SciFact (or Python's docs when
../shared/data is absent), documents truncated at --max-doc tokens, AdamW, fp32. A step = tokenise + forward +
backward + optimizer step. Steps alternate between the two so machine noise hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim"


def triples(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    if (SCIFACT / "corpus.jsonl").is_file():
        docs = {d["_id"]: f"{d['title']}. {d['text']}" for d in map(json.loads, open(SCIFACT / "corpus.jsonl"))}
        queries = {q["_id"]: q["text"] for q in map(json.loads, open(SCIFACT / "queries.jsonl"))}
        pairs = [line.split("\t")[:2] for line in (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()[1:]]
        ids = list(docs)
        picked = rng.sample(pairs, n)
        return [(queries[q], docs[d], docs[rng.choice(ids)]) for q, d in picked]
    from pydoc_data.topics import topics

    names = sorted(topics)
    picked = rng.sample(names, n)
    return [(f"What is {t}?", topics[t], topics[rng.choice(names)]) for t in picked]


SHAPES = {  # random-initialised bidirectional Llamas for the throughput / MFU mode
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True),
}


def mfu(args) -> None:
    """Tokens/s and MFU of our training step on a random-initialised Llama-shaped encoder: every text exactly
    ``--seq`` tokens, ``--negatives`` hard negatives, bf16 on GPU, gradient checkpointing as the 8B recipe."""
    import torch

    from embedpipe.encoder.modeling_bidirectional_llama import LlamaBidirectionalConfig, LlamaBidirectionalModel
    from embedpipe.recipe import load_recipe
    from embedpipe.training import tracking
    from embedpipe.training.backends import make_backend
    from embedpipe.training.data import Examples
    from embedpipe.training.losses import build_loss
    from embedpipe.training.run import micro_batch_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = LlamaBidirectionalConfig(**SHAPES[args.shape], max_position_embeddings=max(2048, args.seq))
    config._attn_implementation = "sdpa"
    model = LlamaBidirectionalModel(config)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = sum(p.numel() for p in model.parameters())
    recipe = load_recipe(REPO / "recipes" / "local.yaml", {"training.stage2.batch_size": args.batch,
                                                           "training.stage2.warmup_steps": 0})
    stage = recipe.training.stage2
    bf16 = device.type == "cuda"
    micro = args.micro or args.batch
    backend = make_backend("torch", model, stage, recipe.training, device, 0, 1, args.batch // micro, bf16, micro)
    loss_fn = build_loss("hard_negative_infonce", 0.02)
    k, n = args.negatives, args.batch
    gen = torch.Generator().manual_seed(1)

    def ids():
        return torch.randint(10, config.vocab_size, (args.seq,), generator=gen).tolist()

    ex = Examples([ids() for _ in range(n)], [[ids() for _ in range(k + 1)] for _ in range(n)],
                  [f"q{i}" for i in range(n)], [[f"d{i}-{j}" for j in range(k + 1)] for i in range(n)],
                  [False] * n, [str(i) for i in range(n)])
    times, tokens = [], 0
    for step in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        real = 0
        for m in range(0, n, micro):
            loss, r, _ = micro_batch_loss(backend, loss_fn, ex, list(range(m, m + micro)), k, 0, device,
                                          args.max_tokens)
            backend.backward(loss)
            real += r
        backend.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up kernels and allocates optimizer state
            times.append(time.perf_counter() - t0)
            tokens += real
    seconds = sum(times)
    tps = tokens / seconds
    flops = tracking.train_flops_per_token(config, args.seq)
    peak = tracking.peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{args.shape} ({params / 1e9:.2f} B params) bidirectional, {n} queries x (1 + 1 + {k}) texts x "
          f"{args.seq} tokens, {'bf16' if bf16 else 'fp32'}, checkpointing {args.checkpointing}, on {name}")
    print(f"step {statistics.median(times):.3f} s, {tps:,.0f} tokens/s, {flops * tps / 1e12:.1f} TFLOP/s"
          + (f", MFU {flops * tps / peak:.1%} (peak {peak / 1e12:.0f} TFLOP/s bf16 dense)" if peak else ""))
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(json.dumps({"shape": args.shape, "tokens_per_s": tps, "tflops": flops * tps / 1e12,
                      "mfu": flops * tps / peak if peak else None, "step_s": statistics.median(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", action="store_true", help="throughput/MFU mode on a random Llama shape (GPU)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--micro", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=65536)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-query", type=int, default=64)
    parser.add_argument("--max-doc", type=int, default=128)
    args = parser.parse_args()
    if args.mfu:
        return mfu(args)

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from embedpipe.data.schema import Record
    from embedpipe.encoder.convert import convert_checkpoint, ensure_base_checkpoint
    from embedpipe.encoder.instructions import format_query
    from embedpipe.recipe import load_recipe
    from embedpipe.training.backends import make_backend
    from embedpipe.training.data import build_examples
    from embedpipe.training.losses import build_loss
    from embedpipe.training.run import load_init_encoder, micro_batch_loss, training_encoder

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    export = convert_checkpoint(ensure_base_checkpoint(), tmp / "encoder", max_length=args.max_doc,
                                query_max_length=args.max_query)
    data = triples(args.batch * (args.steps + 1))
    batches = [data[i * args.batch:(i + 1) * args.batch] for i in range(args.steps + 1)]

    # ours ------------------------------------------------------------------------------------------------
    recipe = load_recipe(REPO / "recipes" / "local.yaml", {"training.stage1.batch_size": args.batch,
                                                           "training.stage1.warmup_steps": 0})
    stage = recipe.training.stage1
    init, _ = load_init_encoder(export)
    model, tokenizer = init.model, init.tokenizer
    model.train()
    backend = make_backend("torch", model, stage, recipe.training, torch.device("cpu"), 0, 1, 1, False, args.batch)
    encoder = training_encoder(backend, tokenizer, stage)
    loss_fn = build_loss("hard_negative_infonce", 0.02)

    def our_step(batch) -> tuple[float, int]:
        t0 = time.perf_counter()
        records = [Record(id=str(i), query=q, positives=[p], negatives=[n], instruction=INSTRUCTION)
                   for i, (q, p, n) in enumerate(batch)]
        ex = build_examples(records, tokenizer, 1, args.max_query, args.max_doc)
        loss, real, _ = micro_batch_loss(backend, encoder, loss_fn, ex, list(range(len(ex))), 1,
                                         stage.max_tokens_per_forward)
        backend.backward(loss)
        backend.step()
        return time.perf_counter() - t0, real

    # sentence-transformers --------------------------------------------------------------------------------
    st = SentenceTransformer(str(export), device="cpu", trust_remote_code=True)
    st.max_seq_length = args.max_doc
    st.train()
    mnrl = MultipleNegativesRankingLoss(st, scale=1 / 0.02)
    st_opt = torch.optim.AdamW(st.parameters(), lr=stage.learning_rate, weight_decay=stage.weight_decay)

    def st_step(batch) -> tuple[float, int]:
        t0 = time.perf_counter()
        columns = [[format_query(q, INSTRUCTION) for q, _, _ in batch], [p for _, p, _ in batch],
                   [n for _, _, n in batch]]
        features = [st.tokenize(col) for col in columns]
        loss = mnrl(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
        st_opt.step()
        st_opt.zero_grad(set_to_none=True)
        real = sum(int(f["attention_mask"].sum()) for f in features)
        return time.perf_counter() - t0, real

    ours, theirs = [], []
    our_step(batches[0]), st_step(batches[0])  # warm-up
    for batch in batches[1:]:
        ours.append(our_step(batch))
        theirs.append(st_step(batch))
    o = statistics.median(t for t, _ in ours)
    s = statistics.median(t for t, _ in theirs)
    o_tok = sum(r for _, r in ours) / sum(t for t, _ in ours)
    s_tok = sum(r for _, r in theirs) / sum(t for t, _ in theirs)
    print(f"\nOne training step, SmolLM2-135M bidirectional, batch {args.batch} x (query + positive + 1 negative), "
          f"max {args.max_query}/{args.max_doc} tokens, CPU fp32, {torch.get_num_threads()} threads, median of {args.steps}")
    print(f"{'':<34}{'step s':>9}{'tokens/s':>10}")
    print(f"{'embedpipe (hard-negative InfoNCE)':<34}{o:>9.2f}{o_tok:>10.0f}")
    print(f"{'sentence-transformers MNRL':<34}{s:>9.2f}{s_tok:>10.0f}")
    print(f"ratio (ST / ours, >1 = ours faster): {s / o:.2f}x")
    print(json.dumps({"ours_step_s": o, "st_step_s": s, "ratio": s / o, "ours_tokens_per_s": o_tok,
                      "st_tokens_per_s": s_tok, "batch": args.batch, "steps": args.steps}))


if __name__ == "__main__":
    main()
