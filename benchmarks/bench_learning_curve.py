"""Held-out score vs training steps (and seconds per step) of the embedded default's stage 1, beside
all-minilm-l6-v2 scored in the same run: the curve behind ``recipes/local.yaml``'s step budget.

Input: the mined records and held-out tasks of one pipeline run (``<run>/mine/records/records.jsonl`` and
``<run>/build-data/data/eval``; ``--run-dir`` finds both). One real ``train_stage`` run of the recipe's stage 1
(its loss, precision, lengths, batch and schedule; ``--set`` changes any of them) to the largest step count, with a
checkpoint at every other point of ``--points``; each checkpoint becomes an encoder export and is scored on the
held-out tasks (PydocRetrieval: nDCG@10). The intermediate points sit on the long run's schedule (the learning rate
not yet decayed); ``--separate`` trains one run per point instead (each with its own schedule; costs the sum).

    nice python benchmarks/bench_learning_curve.py --run-dir .embedpipe/runs/kfp/<run> --points 24,48,72
    nice python benchmarks/bench_learning_curve.py --run-dir ... --points 48 --set training.stage1.learning_rate=3e-5

Step time is the trainer's own per-step wall time (tokenised data, forward, backward, optimizer), median over the
run; on a shared machine it moves with the load (the script prints the load average beside it).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TASK = "PydocRetrieval"


def find_inputs(run_dir: Path) -> tuple[Path, Path]:
    records = sorted(run_dir.glob("mine/records/records.jsonl"))
    tasks = sorted(run_dir.glob("build-data/data/eval/tasks.json"))
    if not records or not tasks:
        raise SystemExit(f"{run_dir}: no mine/records/records.jsonl or build-data/data/eval/tasks.json "
                         f"(a run of `embedpipe run recipes/local.yaml` that got past mining)")
    return records[0], tasks[0].parent


def score(model: str, tasks_dir: Path, work: Path, recipe) -> float:
    from embedpipe.evaluation.run import evaluate

    name = Path(model).name if os.path.sep in model else model
    summary = evaluate(model, recipe.evaluation, work / "results" / name, extra_tasks_dir=tasks_dir,
                       cache_dir=work / "emb-cache" / name, model_name=f"bench/{name}")
    return 100 * summary["scores"][TASK]


def train(recipe, records: Path, out: Path, steps: int, checkpoints: list[int], ckpt_dir: Path | None) -> dict:
    from embedpipe.training import checkpoint, run

    stage = recipe.training.stage1.model_copy(update={"steps": steps,
                                                      "checkpoint_every": _gcd(checkpoints) if checkpoints else None})
    recipe = recipe.model_copy(update={"training": recipe.training.model_copy(update={"stage1": stage})})
    # keep every checkpoint (the trainer keeps the last two): each is scored after the run
    run.CheckpointStore = functools.partial(checkpoint.CheckpointStore, keep=10 ** 6)
    return run.train_stage(recipe, "stage1", records, recipe.model.base, out, checkpoint_dir=ckpt_dir,
                           resume=False)


def _gcd(values: list[int]) -> int:
    import math

    return functools.reduce(math.gcd, values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="A pipeline run folder (.embedpipe/runs/kfp/<run>).")
    parser.add_argument("--records", type=Path, help="Mined records (default: from --run-dir).")
    parser.add_argument("--tasks-dir", type=Path, help="Held-out tasks folder with tasks.json (default: --run-dir).")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "local.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Recipe override.")
    parser.add_argument("--points", default="24,48,72", help="Step counts to score, comma-separated.")
    parser.add_argument("--separate", action="store_true", help="One run per point (own schedule each).")
    parser.add_argument("--base", action="store_true", help="Also score the untrained encoder (step 0).")
    parser.add_argument("--work", type=Path, help="Scratch folder (default: a temporary one, removed).")
    parser.add_argument("--json", dest="json_out", type=Path, help="Write the curve as JSON here.")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("mteb", "httpx", "urllib3", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    from embedpipe.recipe import load_recipe
    from embedpipe.training.consolidate import consolidate

    records, tasks_dir = args.records, args.tasks_dir
    if args.run_dir:
        found = find_inputs(args.run_dir)
        records, tasks_dir = records or found[0], tasks_dir or found[1]
    if not records or not tasks_dir:
        raise SystemExit("give --run-dir, or --records and --tasks-dir")
    recipe = load_recipe(args.recipe, args.overrides)
    points = sorted({int(p) for p in args.points.split(",") if p.strip()})
    work = args.work or Path(tempfile.mkdtemp(prefix="embedpipe-curve-"))
    work.mkdir(parents=True, exist_ok=True)
    s1 = recipe.training.stage1
    print(f"stage 1: {s1.batch_size} queries/step, {s1.hard_negatives} hard negative(s), lr {s1.learning_rate:g} "
          f"({s1.schedule}, warm-up {s1.warmup_steps}), lengths q{s1.max_query_length}/d{s1.max_document_length}, "
          f"precision {recipe.training.precision}, {torch.get_num_threads()} threads, "
          f"CPU {torch.backends.cpu.get_cpu_capability()}; records {records}", flush=True)

    reference = score("all-minilm-l6-v2", tasks_dir, work, recipe)
    print(f"  all-minilm-l6-v2: nDCG@10 {reference:.2f}", flush=True)
    rows: list[dict] = []
    if args.base:
        from embedpipe.encoder.convert import convert_checkpoint

        base_dir = work / "step-0"
        convert_checkpoint(recipe.model.base, base_dir, max_length=s1.max_document_length,
                           query_max_length=s1.max_query_length)
        rows.append({"steps": 0, "seconds_per_step": None, "train_seconds": 0.0,
                     "ndcg10": score(str(base_dir), tasks_dir, work, recipe)})
        print(f"  step 0: nDCG@10 {rows[-1]['ndcg10']:.2f}", flush=True)

    runs = [[p] for p in points] if args.separate else [points]
    for group in runs:
        last = group[-1]
        ckpt = work / f"ckpt-{last}"
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        summary = train(recipe, records, work / f"step-{last}", last, group[:-1], ckpt if group[:-1] else None)
        wall = time.perf_counter() - t0
        per_step = [h["seconds"] for h in summary["history"] if "seconds" in h]
        median = statistics.median(per_step) if per_step else wall / last
        for p in reversed(group):  # the longest run's score first
            model_dir = work / f"step-{p}"
            if p != last:
                consolidate(ckpt / f"step-{p:08d}", recipe.model.base, model_dir,
                            max_length=s1.max_document_length, query_max_length=s1.max_query_length)
            rows.append({"steps": p, "seconds_per_step": round(median, 2),
                         "train_seconds": round(sum(per_step[:p]) if per_step else wall * p / last, 1),
                         "loss": summary["history"][p - 1]["loss"], "ndcg10": score(str(model_dir), tasks_dir, work,
                                                                                   recipe),
                         "load_avg": round(load0, 1), "bf16": summary["bf16"]})
            print(f"  step {p}: nDCG@10 {rows[-1]['ndcg10']:.2f} (loss {rows[-1]['loss']:.3f}, "
                  f"{rows[-1]['train_seconds']:.0f} s of steps)", flush=True)
            shutil.rmtree(model_dir, ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)

    rows.sort(key=lambda r: r["steps"])
    print(f"\n{TASK} nDCG@10 x100 vs steps (reference all-minilm-l6-v2: {reference:.2f}; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'steps':>6} {'s/step':>7} {'train s':>8} {'nDCG@10':>8} {'vs MiniLM':>10}")
    for r in rows:
        sps = f"{r['seconds_per_step']:.2f}" if r["seconds_per_step"] else "-"
        print(f"{r['steps']:>6} {sps:>7} {r['train_seconds']:>8.0f} {r['ndcg10']:>8.2f} "
              f"{r['ndcg10'] / reference:>9.2f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps({"reference_all_minilm_l6_v2": reference, "curve": rows,
                                             "overrides": args.overrides}, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
