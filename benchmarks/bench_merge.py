"""Merge of 6 SmolLM2-135M encoders: embedpipe's streamed merge vs loading all six state dicts at once and averaging.

Six encoders are made by perturbing the SmolLM2 export's weights with different seeds. Each method runs in its own
process, so its peak resident memory (ru_maxrss, minus the process's footprint after imports) is its own. The outputs
are compared tensor by tensor.

    HF_HUB_OFFLINE=1 python benchmarks/bench_merge.py [--work DIR] [--models 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_inputs(work: Path, n: int) -> list[Path]:
    import torch
    from safetensors.torch import load_file, save_file

    from embedpipe.encoder.convert import convert_checkpoint, ensure_base_checkpoint

    base = work / "base-encoder"
    if not (base / "embedpipe.json").is_file():
        convert_checkpoint(ensure_base_checkpoint(), base, max_length=128)
    state = {}
    for f in sorted(base.glob("*.safetensors")):
        state.update(load_file(str(f)))
    dirs = []
    for seed in range(n):
        out = work / f"encoder-{seed}"
        if not (out / "model.safetensors").is_file():
            shutil.copytree(base, out, dirs_exist_ok=True)
            for f in out.glob("*.safetensors"):
                f.unlink()
            gen = torch.Generator().manual_seed(seed)
            noisy = {k: v + 1e-3 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in state.items()}
            save_file(noisy, str(out / "model.safetensors"), metadata={"format": "pt"})
            del noisy
        dirs.append(out)
    return dirs


def worker(method: str, inputs: list[Path], out: Path) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from embedpipe.merging.merge import merge_checkpoints

    before = rss_mb()
    start = time.perf_counter()
    if method == "streamed":
        merge_checkpoints(inputs, out, track=False)
    else:  # the reference: every state dict in memory, then average
        states = [load_file(str(d / "model.safetensors")) for d in inputs]
        merged = {k: torch.stack([s[k] for s in states]).mean(dim=0) for k in states[0]}
        out.mkdir(parents=True, exist_ok=True)
        save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    seconds = time.perf_counter() - start
    return {"method": method, "seconds": seconds, "peak_rss_mb": rss_mb(), "rss_after_imports_mb": before,
            "peak_extra_mb": rss_mb() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the inputs (default: a temp folder).")
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--worker", choices=["streamed", "all-at-once"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs="*", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.inputs, args.out)))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(work, args.models)
    size_mb = sum(f.stat().st_size for f in inputs[0].glob("*.safetensors")) / 2**20
    results = {}
    for method in ("streamed", "all-at-once"):
        out = work / f"merged-{method}"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, __file__, "--worker", method, "--out", str(out), "--inputs",
                               *map(str, inputs)], capture_output=True, text=True, check=True)
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])

    import torch
    from safetensors.torch import load_file

    a = load_file(str(work / "merged-streamed" / "model.safetensors"))
    b = load_file(str(work / "merged-all-at-once" / "model.safetensors"))
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    s, r = results["streamed"], results["all-at-once"]
    print(f"merge of {len(inputs)} SmolLM2-135M encoders ({size_mb:.0f} MiB of weights each)")
    print(f"{'method':<14}{'seconds':>10}{'peak extra RSS (MiB)':>24}")
    for name, item in results.items():
        print(f"{name:<14}{item['seconds']:>10.2f}{item['peak_extra_mb']:>24.0f}")
    print(f"streamed / all-at-once: time x{s['seconds'] / r['seconds']:.2f}, "
          f"peak memory x{s['peak_extra_mb'] / r['peak_extra_mb']:.2f}")
    print(f"max |difference| between the two merged models: {max_diff:.3g} (streamed accumulates in float64)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    del torch


if __name__ == "__main__":
    main()
