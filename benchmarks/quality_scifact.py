"""Quality check: does training improve retrieval? SmolLM2-135M made bidirectional (the embedded default) is trained
with our trainer on SciFact's train qrels (hard negatives mined by embedpipe.mining with all-MiniLM-L6-v2 + FAISS),
and nDCG@10 on SciFact's test qrels over the FULL corpus is measured before and after (pytrec_eval).

    nice python benchmarks/quality_scifact.py --steps 250 --batch 16 --max-doc 128 --precision bf16  # full corpus

Needs ../shared/data/scifact (BEIR format). Prints a before/after table and writes <out>/quality_scifact.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
INSTRUCTION = "Given a scientific claim, retrieve documents that support or refute the claim"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def doc_text(doc: dict) -> str:
    return f"{doc.get('title', '')}. {doc['text']}".strip(". ") if doc.get("title") else doc["text"]


def ndcg_at_10(model_dir: Path, corpus: list[dict], queries: dict[str, str], qrels: dict, max_doc: int,
               max_query: int, batch_size: int = 32, precision: str = "fp32") -> dict:
    """Encode the full corpus and the test queries, rank by cosine (FAISS inner product), score with pytrec_eval."""
    import faiss
    import numpy as np
    import pytrec_eval
    import torch

    from embedpipe.encoder import Encoder

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    encoder = Encoder.from_pretrained(model_dir, device="cpu", dtype=dtype, max_length=max_doc)
    t0 = time.perf_counter()
    docs = encoder.encode_documents([doc_text(d) for d in corpus], task_type="retrieval", batch_size=batch_size,
                                    max_length=max_doc, show_progress_bar=False)
    qids = sorted(qrels)
    qemb = encoder.encode_queries([queries[q] for q in qids], INSTRUCTION, batch_size=batch_size,
                                  max_length=max_query)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs.astype(np.float32))
    scores, ids = index.search(qemb.astype(np.float32), 100)
    run = {q: {corpus[int(j)]["_id"]: float(s) for s, j in zip(scores[i], ids[i])} for i, q in enumerate(qids)}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_query = evaluator.evaluate(run)
    return {"ndcg@10": float(np.mean([v["ndcg_cut_10"] for v in per_query.values()])),
            "recall@100": float(np.mean([v["recall_100"] for v in per_query.values()])),
            "queries": len(qids), "corpus": len(corpus), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--max-query", type=int, default=64)
    parser.add_argument("--max-doc", type=int, default=160)
    parser.add_argument("--loss", default="hard_negative_infonce")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: autocast training and bf16 encoding, as on GPU (several times faster on a CPU "
                             "with AMX/AVX512-BF16); before and after are measured the same way")
    parser.add_argument("--out", type=Path, default=REPO / ".embedpipe" / "bench" / "quality_scifact")
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--corpus-size", type=int, default=None,
                        help="evaluate on a subset: every test-relevant and training-positive document plus seeded "
                             "random distractors up to this size (the full corpus when omitted)")
    parser.add_argument("--train-records", type=int, default=None, help="seeded sample of the training pairs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (args.data / "corpus.jsonl").is_file():
        raise SystemExit(f"{args.data} holds no BEIR corpus.jsonl")

    from embedpipe.data.schema import write_records
    from embedpipe.encoder.convert import convert_checkpoint, ensure_base_checkpoint
    from embedpipe.mining.config import MiningConfig, TeacherConfig
    from embedpipe.mining.mine import mine_hard_negatives
    from embedpipe.recipe import load_recipe
    from embedpipe.training.run import train_stage

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    corpus = read_jsonl(args.data / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(args.data / "queries.jsonl")}
    train_qrels = read_qrels(args.data / "qrels" / "train.tsv")
    test_qrels = read_qrels(args.data / "qrels" / "test.tsv")
    import random

    rng = random.Random(0)
    pairs = [(q, d) for q, rel in sorted(train_qrels.items()) for d in sorted(rel) if rel[d] > 0 and q in queries]
    if args.train_records:
        pairs = rng.sample(pairs, min(args.train_records, len(pairs)))
    if args.corpus_size:
        keep = {d for rel in test_qrels.values() for d in rel} | {d for _, d in pairs}
        rest = [d["_id"] for d in corpus if d["_id"] not in keep]
        keep |= set(rng.sample(rest, max(0, min(len(rest), args.corpus_size - len(keep)))))
        corpus = [d for d in corpus if d["_id"] in keep]
    by_id = {d["_id"]: d for d in corpus}

    # records: one per (train query, relevant document); negatives mined by embedpipe.mining (positive-aware)
    (out / "corpus.jsonl").write_text("".join(json.dumps({"id": d["_id"], "text": doc_text(d)}) + "\n" for d in corpus))
    records = [{"id": f"scifact-{q}-{d}", "task_type": "retrieval", "instruction": INSTRUCTION, "source": "scifact",
                "query": queries[q], "positives": [doc_text(by_id[d])], "positive_ids": [d]}
               for q, d in pairs if d in by_id]
    write_records(records, out / "records.jsonl")
    t0 = time.perf_counter()
    mining = MiningConfig(teachers=[TeacherConfig(model="all-minilm-l6-v2")], top_k=args.negatives, candidates=50)
    mine_stats = mine_hard_negatives(out / "records.jsonl", out / "corpus.jsonl", mining, out / "mined.jsonl",
                                     cache_dir=out / "mining-cache", show=False)
    mining_s = time.perf_counter() - t0
    from embedpipe.data.schema import read_records

    mined = read_records(out / "mined.jsonl")
    usable = [r for r in mined if len(r.negatives) >= args.negatives]
    dropped = len(mined) - len(usable)  # the margin filter can leave a record without negatives: counted, not hidden
    write_records(usable, out / "train.jsonl")
    print(f"mined {len(mined)} records; {dropped} dropped with fewer than {args.negatives} negatives", flush=True)

    base = out / "smollm2-encoder"
    if not (base / "embedpipe.json").exists():
        convert_checkpoint(ensure_base_checkpoint(), base, max_length=args.max_doc, query_max_length=args.max_query)
    key = json.dumps([len(corpus), sorted(by_id)[:5], args.max_doc, args.max_query, args.precision])
    cached = out / "before.json"
    if cached.is_file() and json.loads(cached.read_text()).get("key") == key:
        before = json.loads(cached.read_text())["result"]  # the untrained model's score does not change
    else:
        before = ndcg_at_10(base, corpus, queries, test_qrels, args.max_doc, args.max_query,
                            precision=args.precision)
        cached.write_text(json.dumps({"key": key, "result": before}))
    print(f"before: {before}", flush=True)

    recipe = load_recipe(REPO / "recipes" / "local.yaml", {
        "training.loss": args.loss, "training.stage1.steps": args.steps, "training.stage1.batch_size": args.batch,
        "training.stage1.learning_rate": args.lr, "training.stage1.warmup_steps": max(1, args.steps // 20),
        "training.stage1.hard_negatives": args.negatives, "training.stage1.max_query_length": args.max_query,
        "training.stage1.max_document_length": args.max_doc, "training.stage1.log_every": 10,
        "training.precision": args.precision})
    t0 = time.perf_counter()
    summary = train_stage(recipe, "stage1", out / "train.jsonl", base, out / "trained")
    train_s = time.perf_counter() - t0
    after = ndcg_at_10(out / "trained", corpus, queries, test_qrels, args.max_doc, args.max_query,
                       precision=args.precision)

    result = {"before": before, "after": after, "ndcg_gain": after["ndcg@10"] - before["ndcg@10"],
              "train": {k: summary[k] for k in ("steps", "batch_size", "records", "hard_negatives", "loss",
                                                "first_loss", "final_loss", "mean_tokens_per_s", "padding_fraction")},
              "train_seconds": round(train_s, 1), "mining_seconds": round(mining_s, 1),
              "records_dropped_without_negatives": dropped,
              "mining": {k: v for k, v in mine_stats.items() if isinstance(v, (int, float, str))},
              "args": {k: str(v) for k, v in vars(args).items()}}
    (out / "quality_scifact.json").write_text(json.dumps(result, indent=2))
    print(f"\nSciFact test ({after['queries']} queries, {after['corpus']} of 5183 documents), "
          f"SmolLM2-135M bidirectional, mean pooling, {args.precision}, documents cut at {args.max_doc} tokens; "
          f"{len(records)} training pairs")
    print(f"{'':<22}{'nDCG@10':>10}{'Recall@100':>12}")
    print(f"{'before training':<22}{before['ndcg@10']:>10.4f}{before['recall@100']:>12.4f}")
    print(f"{f'after {args.steps} steps':<22}{after['ndcg@10']:>10.4f}{after['recall@100']:>12.4f}")
    print(f"gain: {result['ndcg_gain']:+.4f} nDCG@10 ({after['ndcg@10'] / max(before['ndcg@10'], 1e-9):.2f}x); "
          f"training {train_s:.0f} s, loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}")


if __name__ == "__main__":
    main()
