"""Wall time of `embedpipe run recipes/local.yaml` (kfp.local, SubprocessRunner) and the part that is orchestration.

Runs the full pipeline once without cache in a fresh folder, then once more with the cache (every step but the
tracking step skipped). Compute is what the step functions report as ``step_seconds`` (their own work, measured
inside the step), summed along the critical path (the stage-2 runs count whole when they run one at a time, else their slowest); orchestration
overhead = wall - compute: process starts, imports, KFP executor bookkeeping, caching, MLflow/KServe recording.
The reference is the same steps' compute without the orchestrator, so overhead/compute is the price of KFP.

    HF_HUB_OFFLINE=1 python benchmarks/bench_local_run.py [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def step_outputs(run_dir: Path) -> dict[str, dict]:
    """task path -> its summary (the "Output" parameter of executor_output.json)."""
    out = {}
    for path in sorted(run_dir.rglob("executor_output.json")):
        data = json.loads(path.read_text())
        value = data.get("parameterValues", {}).get("Output")
        if isinstance(value, str) and value.startswith("{"):
            out[str(path.parent.relative_to(run_dir))] = json.loads(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(Path(__file__).resolve().parent.parent / "recipes" / "local.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from embedpipe.orchestration.local_runner import run_local
    from embedpipe.pipelines import build_full_pipeline
    from embedpipe.recipe import load_recipe

    with tempfile.TemporaryDirectory(prefix="bench-local-run-") as tmp:
        base = Path(tmp)
        os.environ["EMBEDPIPE_STEP_CACHE"] = str(base / "step-cache")  # no teacher-embedding cache from earlier runs
        recipe = load_recipe(args.recipe, args.overrides)
        started = time.perf_counter()
        first = run_local(recipe, build_full_pipeline, run_name="bench", base=base, cache=True)
        wall = time.perf_counter() - started
        runs = sorted((base / ".embedpipe" / "runs" / "kfp").glob("embedpipe-full-*"))
        steps = step_outputs(runs[-1])
        per_step = {name: s.get("step_seconds", 0.0) for name, s in steps.items()}
        loop = [v for k, v in per_step.items() if k.startswith("for-loop")]
        # stage-2 runs overlap only when the recipe lets them (pipeline.stage2_parallelism != 1)
        stage2 = (sum(loop) if recipe.pipeline.stage2_parallelism == 1 else max(loop)) if loop else 0.0
        compute = sum(v for k, v in per_step.items() if not k.startswith("for-loop")) + stage2
        started = time.perf_counter()
        run_local(recipe, build_full_pipeline, run_name="bench-cached", base=base, cache=True)
        cached = time.perf_counter() - started

    print(f"recipe {recipe.name}: full pipeline on {os.cpu_count()} cores")
    for name, seconds in per_step.items():
        print(f"  {name:45s} {seconds:8.1f} s compute")
    print(f"wall time (kfp.local, no cache)      {wall:8.1f} s  ({wall / 60:.1f} min; budget 15 min)")
    print(f"step compute, critical path          {compute:8.1f} s  (reference: the steps without an orchestrator)")
    print(f"orchestration overhead               {wall - compute:8.1f} s  = {100 * (wall - compute) / wall:.1f}% of wall,"
          f" ratio wall/compute {wall / compute:.2f}x")
    print(f"re-run with the same inputs (cached) {cached:8.1f} s  ({wall / cached:.1f}x faster than the first run)")
    print(f"scores: {json.dumps(first.get('scores'))}")


if __name__ == "__main__":
    main()
