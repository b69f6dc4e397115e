"""Checkpoint merging: weighted parameter averaging of N encoder exports, streamed one tensor at a time.

llama-embed-nemotron-8b's last gain came from averaging six stage-2 checkpoints. Loading six 8B models at once needs
six models' memory; here each output tensor is the weighted sum of the N memory-mapped input tensors (accumulated in
float64 so that averaging identical checkpoints gives them back bit for bit), written to sharded safetensors as soon
as a shard is full. Peak memory is about one shard plus one tensor per input, not N models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from embedpipe import tracking
from embedpipe.encoder.encoder import EXPORT_MARKER, read_export_metadata
from embedpipe.encoder.export import copy_export_extras

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PROVENANCE_FILE = "merge_provenance.json"
# config.json keys that do not describe the architecture (may differ between checkpoints of one model)
NON_ARCHITECTURE_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "auto_map"}


class MergeError(ValueError):
    """Checkpoints that cannot be averaged (different architecture, parameter names, shapes or dtypes)."""


def parse_size(size: str | int) -> int:
    """``"5GB"`` / ``"500MB"`` / ``"10KB"`` / an int -> bytes (decimal units, as transformers uses)."""
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    units = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            number = text[: -len(unit)].strip()
            try:
                return int(float(number) * factor)
            except ValueError:
                break
    raise ValueError(f"shard size {size!r} is not a size like '5GB', '500MB' or a number of bytes")


def weight_files(model_dir: str | Path) -> dict[str, Path]:
    """Map each tensor name to the safetensors file holding it (single file or sharded with an index)."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise MergeError(f"{index}: not a safetensors index ({err})") from None
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / SINGLE_FILE
    if not single.is_file():
        raise MergeError(f"{model_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}: no safetensors weights to merge")
    with safe_open(str(single), framework="pt") as handle:
        return {name: single for name in handle.keys()}


def tensor_specs(model_dir: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) read from the safetensors headers only (no tensor is loaded)."""
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    files = weight_files(model_dir)
    for path in sorted(set(files.values())):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                specs[name] = (tuple(piece.get_shape()), str(piece.get_dtype()))
    missing = sorted(set(files) - set(specs))
    if missing:
        raise MergeError(f"{model_dir}: the index names tensor {missing[0]!r} but no weight file holds it")
    return specs


def content_hash(model_dir: str | Path) -> str:
    """sha256 over the weight files (sorted by name): identifies a checkpoint by what it holds, not where it lies."""
    digest = hashlib.sha256()
    for path in sorted(set(weight_files(model_dir).values())):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def architecture(model_dir: str | Path) -> dict:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise MergeError(f"{model_dir} has no config.json")
    tree = json.loads(config.read_text())
    return {k: v for k, v in tree.items() if k not in NON_ARCHITECTURE_KEYS}


def check_compatible(model_dirs: Sequence[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Refuse checkpoints that differ in architecture, tensor names, shapes or dtypes, naming the first offender."""
    first = model_dirs[0]
    first_arch = architecture(first)
    first_specs = tensor_specs(first)
    for other in model_dirs[1:]:
        arch = architecture(other)
        for key in sorted(set(first_arch) | set(arch)):
            if first_arch.get(key) != arch.get(key):
                raise MergeError(
                    f"architecture differs: config key {key!r} is {first_arch.get(key)!r} in {first} "
                    f"but {arch.get(key)!r} in {other}"
                )
        specs = tensor_specs(other)
        for name in sorted(set(first_specs) | set(specs)):
            if name not in specs:
                raise MergeError(f"parameter names differ: tensor {name!r} is in {first} but not in {other}")
            if name not in first_specs:
                raise MergeError(f"parameter names differ: tensor {name!r} is in {other} but not in {first}")
            (shape_a, dtype_a), (shape_b, dtype_b) = first_specs[name], specs[name]
            if shape_a != shape_b:
                raise MergeError(f"shape differs for tensor {name!r}: {list(shape_a)} in {first}, {list(shape_b)} in {other}")
            if dtype_a != dtype_b:
                raise MergeError(f"dtype differs for tensor {name!r}: {dtype_a} in {first}, {dtype_b} in {other}")
    return first_specs


def normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """None -> uniform; otherwise non-negative, one per model, scaled to sum to 1."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise MergeError(f"{len(weights)} weights given for {n} checkpoints; give one weight per checkpoint")
    for i, w in enumerate(weights):
        if not w >= 0.0:  # also catches NaN
            raise MergeError(f"weight {i} is {w}; weights must be non-negative numbers")
    total = sum(weights)
    if total <= 0.0:
        raise MergeError("the weights sum to 0; at least one checkpoint needs a positive weight")
    return [w / total for w in weights]


def merge_checkpoints(
    model_dirs: Sequence[str | Path],
    out_dir: str | Path,
    weights: Sequence[float] | None = None,
    shard_size: str | int = "5GB",
    track: bool = True,
) -> dict:
    """Average N encoder exports (uniform, or weighted) into ``out_dir``, a loadable encoder export.

    Returns (and writes to ``out_dir/merge_provenance.json``) the inputs' content hashes and weights; logs them to the
    active MLflow run if there is one (``track=False``: never, e.g. for greedy-soup trials).
    """
    dirs = [Path(d) for d in model_dirs]
    if not dirs:
        raise MergeError("no checkpoints to merge")
    for d in dirs:
        read_export_metadata(d)  # NotAnEncoderExport / FileNotFoundError with the path
    norm = normalise_weights(weights, len(dirs))
    specs = check_compatible(dirs)
    out = Path(out_dir)
    if out.resolve() in {d.resolve() for d in dirs}:
        raise MergeError(f"the output folder {out} is one of the inputs; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("*.safetensors")) + [out / INDEX_FILE]:
        stale.unlink(missing_ok=True)

    limit = parse_size(shard_size)
    # hash the inputs on a second thread while merging (hashlib releases the GIL on large blocks)
    hasher = ThreadPoolExecutor(max_workers=1)
    hashes = [hasher.submit(content_hash, d) for d in dirs]
    try:
        files = [weight_files(d) for d in dirs]

        # Each read opens the file briefly: a safetensors handle memory-maps its file, and pages read through a
        # long-lived handle stay resident, so N open handles would grow to N models of resident memory.
        def read(i: int, name: str, rows: slice | None = None) -> torch.Tensor:
            with safe_open(str(files[i][name]), framework="pt") as handle:
                if rows is None:
                    return handle.get_tensor(name)
                return handle.get_slice(name)[rows]

        shard_paths: list[Path] = []
        weight_map: dict[str, int] = {}
        shard: dict[str, torch.Tensor] = {}
        shard_bytes = 0
        total_size = 0

        def flush() -> None:
            nonlocal shard, shard_bytes
            if not shard:
                return
            path = out / f".shard-{len(shard_paths):05d}.safetensors"
            save_file(shard, str(path), metadata={"format": "pt"})
            shard_paths.append(path)
            shard, shard_bytes = {}, 0

        for name, (shape, _) in specs.items():
            merged = _average_tensor(read, name, shape, norm, dirs)
            nbytes = merged.numel() * merged.element_size()
            if shard and shard_bytes + nbytes > limit:
                flush()
            shard[name] = merged
            shard_bytes += nbytes
            total_size += nbytes
            weight_map[name] = len(shard_paths)
        flush()

        if len(shard_paths) == 1:
            shard_paths[0].rename(out / SINGLE_FILE)
            shard_files = [SINGLE_FILE]
        else:
            n = len(shard_paths)
            shard_files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
            for path, final in zip(shard_paths, shard_files):
                path.rename(out / final)
            index = {"metadata": {"total_size": total_size},
                     "weight_map": {name: shard_files[i] for name, i in weight_map.items()}}
            (out / INDEX_FILE).write_text(json.dumps(index, indent=2))

        copy_export_extras(dirs[0], out)
        input_hashes = [h.result() for h in hashes]
    except BaseException:  # stop hashing the rest and leave no shards behind (out held none of ours before: see above)
        hasher.shutdown(wait=False, cancel_futures=True)
        for written in [*out.glob(".shard-*.safetensors"), *out.glob("*.safetensors"), out / INDEX_FILE]:
            written.unlink(missing_ok=True)
        raise
    hasher.shutdown()
    provenance = {
        "method": "uniform" if weights is None else "weighted",
        "inputs": [
            {"path": str(d), "sha256": h, "weight": float(w), "weight_given": (float(weights[i]) if weights is not None else None)}
            for i, (d, h, w) in enumerate(zip(dirs, input_hashes, norm))
        ],
        "output_sha256": content_hash(out),
        "tensors": len(specs),
        "total_size": total_size,
        "shards": shard_files,
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    meta = json.loads((out / EXPORT_MARKER).read_text())
    meta["merged_from"] = [{"sha256": h, "weight": float(w)} for h, w in zip(input_hashes, norm)]
    (out / EXPORT_MARKER).write_text(json.dumps(meta, indent=2, default=str))
    log.info("merged %d checkpoints into %s (%d tensors, %d shard(s))", len(dirs), out, len(specs), len(shard_files))
    if track:
        _log_to_mlflow(provenance, out)
    return {"out_dir": str(out), **provenance}


CHUNK_ELEMENTS = 1 << 22  # rows are averaged in float64 chunks of about this many elements (32 MiB)


def _average_tensor(read, name: str, shape: tuple[int, ...], norm: list[float], dirs: list[Path]) -> torch.Tensor:
    """Weighted average of one tensor over the inputs, in float64 row chunks (bounded temporaries), cast back."""
    if not shape or shape[0] == 0:
        pieces: list[slice | None] = [None]
    else:
        step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
        pieces = [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]
    out = None
    for rows in pieces:
        base = read(0, name, rows)
        if not base.is_floating_point():  # integer buffers (none in a Llama encoder) must agree, not be averaged
            for i in range(1, len(dirs)):
                if not torch.equal(base, read(i, name, rows)):
                    raise MergeError(f"non-float tensor {name!r} differs between {dirs[0]} and {dirs[i]}")
            merged = base
        else:  # in-place mixed-dtype ops: no float64 copy of each input
            acc = torch.empty(base.shape, dtype=torch.float64).copy_(base).mul_(norm[0])
            for i in range(1, len(dirs)):
                if norm[i]:
                    acc.add_(read(i, name, rows), alpha=norm[i])
            merged = acc
        if rows is None:
            return merged.to(base.dtype).reshape(shape).contiguous()
        if out is None:
            out = torch.empty(shape, dtype=base.dtype)
        out[rows].copy_(merged)
    return out


def _log_to_mlflow(provenance: dict, out: Path) -> None:
    if not tracking.active():
        return
    import mlflow

    tracking.log_params({
        "merge.method": provenance["method"],
        "merge.n_models": len(provenance["inputs"]),
        "merge.weights": ",".join(f"{x['weight']:.6g}" for x in provenance["inputs"]),
    })
    for i, item in enumerate(provenance["inputs"]):
        mlflow.set_tag(f"merge.input.{i}.sha256", item["sha256"])
    mlflow.set_tag("merge.output.sha256", provenance["output_sha256"])
    mlflow.log_artifact(str(out / PROVENANCE_FILE), artifact_path="merge")


__all__ = ["MergeError", "merge_checkpoints", "check_compatible", "content_hash", "normalise_weights", "parse_size",
           "tensor_specs", "weight_files"]
