"""The whole data build for 100k records (records/s), against a plain ``datasets`` read + write of the same rows.

Writes a 100k-row JSONL table (query / positive / negative, texts cut from Python's docs, 1% of rows broken: empty
query) and builds it together with the pydoc source: load + layout mapping, validation, duplicate-id and
decontamination checks against the held-out pydoc task, records.jsonl + corpus.jsonl + eval/ + a manifest with both
stages' mixes. The reference is ``datasets.load_dataset("json")`` + ``Dataset.to_json`` of the same file (no
validation, no decontamination, no mixing), i.e. the cost of only moving the rows.

    HF_HUB_OFFLINE=1 python benchmarks/bench_data_build.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_table(path: Path, n: int, seed: int = 0) -> None:
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        start = rng.randrange(len(words) - hi)
        return " ".join(words[start:start + rng.randint(lo, hi)])

    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            query = "" if i % 100 == 99 else f"{text(4, 12)} {i}"
            fh.write(json.dumps({"query": query, "positive": text(30, 120), "negative": text(30, 120)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    import datasets
    import yaml

    from embedpipe.data.build import build_training_data
    from embedpipe.recipe import load_recipe

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = tmp / "table.jsonl"
        write_table(table, args.n)
        recipe_path = tmp / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump({
            "name": "bench", "model": {"base": "smollm2-135m-instruct"},
            "data": {"sources": [{"name": "pydoc", "kind": "pydoc"},
                                 {"name": "table", "kind": "jsonl", "path": str(table), "weight_stage1": 1.0,
                                  "weight_stage2": 0.5}]}}))
        recipe = load_recipe(recipe_path)
        started = time.perf_counter()
        manifest = build_training_data(recipe.data, tmp / "out")
        ours = time.perf_counter() - started

        started = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=str(table), split="train", cache_dir=str(tmp / "hf-cache"))
        ds.to_json(str(tmp / "reference.jsonl"))
        reference = time.perf_counter() - started
    row = {"rows": args.n, "records": manifest["records"], "dropped": manifest["dropped"],
           "decontaminated": manifest["decontamination"]["removed"], "seconds": round(ours, 2),
           "records_per_s": round(manifest["records"] / ours), "reference": "datasets load_dataset(json) + to_json",
           "reference_seconds": round(reference, 2), "reference_rows_per_s": round(args.n / reference),
           "ratio_vs_reference": round(ours / reference, 2)}
    print(json.dumps(row))
    print(f"data build: {row['records_per_s']} records/s ({row['seconds']} s for {args.n} rows); "
          f"plain datasets read+write: {row['reference_rows_per_s']} rows/s; build takes {row['ratio_vs_reference']}x")


if __name__ == "__main__":
    main()
