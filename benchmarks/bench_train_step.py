"""One training step of our trainer vs sentence-transformers' MultipleNegativesRankingLoss on the same model, batch
and lengths (CPU). MNRL also scores in-batch candidates, so only step time is compared, not the loss.

    python benchmarks/bench_train_step.py --batch 16 --steps 3

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-query", type=int, default=64)
    parser.add_argument("--max-doc", type=int, default=128)
    args = parser.parse_args()

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
    from embedpipe.training.run import load_init_model, micro_batch_loss

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    export = convert_checkpoint(ensure_base_checkpoint(), tmp / "encoder", max_length=args.max_doc,
                                query_max_length=args.max_query)
    data = triples(args.batch * (args.steps + 1))
    batches = [data[i * args.batch:(i + 1) * args.batch] for i in range(args.steps + 1)]

    # ours ------------------------------------------------------------------------------------------------
    recipe = load_recipe(REPO / "recipes" / "local.yaml", {"training.stage1.batch_size": args.batch,
                                                           "training.stage1.warmup_steps": 0})
    stage = recipe.training.stage1
    model, tokenizer, _ = load_init_model(export)
    model.train()
    backend = make_backend("torch", model, stage, recipe.training, torch.device("cpu"), 0, 1, 1, False, args.batch)
    loss_fn = build_loss("hard_negative_infonce", 0.02)

    def our_step(batch) -> tuple[float, int]:
        t0 = time.perf_counter()
        records = [Record(id=str(i), query=q, positives=[p], negatives=[n], instruction=INSTRUCTION)
                   for i, (q, p, n) in enumerate(batch)]
        ex = build_examples(records, tokenizer, 1, args.max_query, args.max_doc)
        loss, real, _ = micro_batch_loss(backend, loss_fn, ex, list(range(len(ex))), 1, tokenizer.pad_token_id,
                                         torch.device("cpu"), stage.max_tokens_per_forward)
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
