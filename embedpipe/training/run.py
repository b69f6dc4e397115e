"""One training stage: records + initial model -> encoder export, with checkpoints, exact resume and MLflow.

``train_stage`` runs in one process or under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment; the
process group is started here when it is not yet). Every bad input is refused before the first step: a record with
too few hard negatives or an empty text, a batch that does not divide over the devices and micro-batches.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import torch

from embedpipe import storage
from embedpipe.encoder.encoder import Encoder, NotAnEncoderExport, cpu_has_native_bf16, read_export_metadata
from embedpipe.training.backends import make_backend
from embedpipe.training.checkpoint import CheckpointStore
from embedpipe.training.config import StageConfig, TrainingConfig
from embedpipe.training.data import Examples, build_examples, device_micro_batches, packed_chunks, step_indices
from embedpipe.training.losses import Keys, build_loss, text_keys
from embedpipe.training import tracking

log = logging.getLogger(__name__)

FAULT_ENV = "EMBEDPIPE_FAULT_AFTER_STEP"  # tests: SIGKILL this process right after the checkpoint of that step


class TrainingConfigError(ValueError):
    """A recipe that cannot run on this many devices (or with this batch); raised before any step."""


# ---------------------------------------------------------------------------------------------- set-up helpers
def init_distributed(single_process_group: bool = False) -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group from torchrun's environment when needed.

    ``single_process_group``: a one-rank group even without torchrun (DeepSpeed and FSDP always need a group)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if single_process_group and world_size == 1 and not torch.distributed.is_initialized():
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                           "LOCAL_RANK": "0"}.items():
            os.environ.setdefault(key, value)
        world_size = 2  # fall through to init_process_group below
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend=backend)
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def resolve_stage(training: TrainingConfig, stage: str, variant: dict | None) -> StageConfig:
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}")
    base = getattr(training, stage)
    if not variant:
        return base
    overrides = dict(variant)
    name = overrides.pop("name", None)
    merged = {**base.model_dump(), **overrides}
    if name:
        merged["name"] = f"{base.name}-{name}"
    return StageConfig.model_validate(merged)


def plan_batches(stage: StageConfig, world_size: int) -> tuple[int, int, int]:
    """(per-device batch, micro-batch, accumulation steps), or a clear error."""
    if stage.batch_size % world_size:
        raise TrainingConfigError(
            f"training.{stage.name}: batch_size {stage.batch_size} does not divide over {world_size} devices")
    per_device = stage.batch_size // world_size
    micro = min(stage.micro_batch_size or per_device, per_device)
    if per_device % micro:
        raise TrainingConfigError(
            f"training.{stage.name}: the per-device batch {per_device} (batch_size {stage.batch_size} / {world_size} "
            f"devices) is not a multiple of micro_batch_size {micro}")
    return per_device, micro, per_device // micro


def load_init_encoder(init_model: str | Path, cache_dir: Path | None = None) -> tuple[Encoder, dict]:
    """(fp32 CPU encoder, metadata) from an encoder export (``Encoder.from_pretrained``) or any base checkpoint
    ``convert`` accepts (folder, .gguf, packaged alias); ``s3://`` sources are fetched through ``storage``.
    The backend moves the model to its device."""
    from embedpipe.encoder.convert import load_bidirectional

    source = storage.local_copy(str(init_model), cache_dir)
    try:
        meta = read_export_metadata(source)
    except (NotAnEncoderExport, FileNotFoundError):
        meta = None
    if meta is not None:
        return Encoder.from_pretrained(source, device="cpu", dtype=torch.float32), meta
    model, tokenizer = load_bidirectional(source, dtype=torch.float32)
    return Encoder(model, tokenizer), {"base_model": str(init_model)}


def load_stage_records(data, training: TrainingConfig, stage: str, records_path, stage_cfg: StageConfig,
                       trusted: bool = False):
    """The stage's records: the file (local or s3://, through storage), mixed and filtered by the data area with
    its own section (``data``: a DataConfig). ``trusted``: the file is the mining step's output, whose records were
    validated once when the data build or SDG made them, so only each row's shape is checked; a user's file (the
    default) is validated field by field."""
    from embedpipe.data.mix import select_stage_records
    from embedpipe.data.schema import read_records

    records = read_records(storage.local_copy(str(records_path)), trusted=trusted)
    # the stage's data weights, then a stage-2 variant's on top (key by key)
    weights = {**(getattr(training, stage).data_weights or {}), **(stage_cfg.data_weights or {})}
    return select_stage_records(records, data, stage, weights_override=weights or None,
                                seed=training.seed, task_types=stage_cfg.task_types)


# ---------------------------------------------------------------------------------------------- the step
def _forward_texts(encoder: Encoder, ids: list[list[int]], max_tokens: int) -> tuple[torch.Tensor, int, int]:
    """Embeddings of token-id lists in length-sorted chunks, through the encoder's own pad and embed (gradients
    kept); returns (embeddings, real tokens, padded tokens)."""
    out: list[torch.Tensor | None] = [None] * len(ids)
    real = padded = 0
    for chunk in packed_chunks(ids, max_tokens):
        batch = encoder._pad([ids[i] for i in chunk])
        emb = encoder.embed(batch)
        for row, i in enumerate(chunk):
            out[i] = emb[row]
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    return torch.stack(out), real, padded


def training_encoder(backend, tokenizer, stage_cfg: StageConfig) -> Encoder:
    """The encoder the step runs: the backend's wrapped module (DDP / FSDP2 / DeepSpeed engine, whose forward syncs
    gradients) with the run's tokenizer and the stage's lengths."""
    return Encoder(backend.module, tokenizer, max_length=stage_cfg.max_document_length,
                   query_max_length=stage_cfg.max_query_length)


def micro_batch_loss(backend, encoder: Encoder, loss_fn, examples: Examples, rows: list[int], k: int,
                     max_tokens: int) -> tuple[torch.Tensor, int, int]:
    device = encoder.device
    q_ids = [examples.query_ids[i] for i in rows]
    d_ids = [d for i in rows for d in examples.doc_ids[i]]
    with backend.autocast():
        q, rq, pq = _forward_texts(encoder, q_ids, max_tokens)
        d, rd, pd = _forward_texts(encoder, d_ids, max_tokens)
    d = d.view(len(rows), k + 1, -1)
    keys = Keys(text_keys([examples.query_texts[i] for i in rows], device),
                text_keys([examples.doc_texts[i][0] for i in rows], device),
                text_keys([t for i in rows for t in examples.doc_texts[i][1:]], device).view(len(rows), k))
    symmetric = torch.tensor([examples.symmetric[i] for i in rows], device=device)
    loss = loss_fn(q.float(), d[:, 0].float(), d[:, 1:].float(), keys=keys, symmetric=symmetric)
    return loss, rq + rd, pq + pd


def _all_sum(values: list[float], device) -> list[float]:
    if not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _precision(training, device) -> bool:
    """bf16 autocast (fp32 weights and optimizer state, the master copy) or plain fp32.

    ``auto``: bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere (emulated bf16 is slower than fp32 there);
    ``bf16`` on such a CPU falls back to fp32 with a logged note."""
    if device.type == "cuda":
        return training.precision != "fp32"
    if training.precision == "fp32":
        return False
    if cpu_has_native_bf16():
        return True
    log.info("training.precision %s: this CPU (%s) has no native bf16 (AVX512-BF16/AMX); training in fp32",
             training.precision, torch.backends.cpu.get_cpu_capability())
    return False


# ---------------------------------------------------------------------------------------------- entry point
def train_stage(recipe, stage: str, records_path, init_model, out_dir, variant: dict | None = None,
                checkpoint_dir=None, resume: bool = True, trusted_records: bool = False) -> dict:
    """Train one stage of ``recipe`` and write ``out_dir`` as an encoder export; returns a JSON-able summary.

    The recipe-level entry (``steps.train``, ``embedpipe.training.launch``): it resolves the stage (and variant),
    has the data area select the stage's records, and hands :func:`train_records` the training section alone.
    ``init_model``: an encoder export (stage 2 starts from stage 1's) or a base checkpoint source.
    ``checkpoint_dir``: local folder or ``s3://`` prefix for periodic checkpoints (``stage.checkpoint_every``);
    with ``resume`` the latest one there is loaded and training continues at its step with the same data order.
    ``trusted_records``: ``records_path`` is the mining step's output (:func:`load_stage_records`).
    """
    stage_cfg = resolve_stage(recipe.training, stage, variant)
    records = load_stage_records(recipe.data, recipe.training, stage, records_path, stage_cfg,
                                 trusted=trusted_records)
    return train_records(recipe.training, stage, stage_cfg, records, init_model, out_dir,
                         checkpoint_dir=checkpoint_dir, resume=resume, params=recipe.flat_params(),
                         source=str(records_path))


def train_records(training: TrainingConfig, stage: str, stage_cfg: StageConfig, records: list, init_model, out_dir,
                  checkpoint_dir=None, resume: bool = True, params: dict | None = None,
                  source: str = "records") -> dict:
    """The training loop on its own section: ``training`` (backend, loss, precision, seed), the resolved
    ``stage_cfg``, and the stage's records. ``params``: extra run parameters to log (the recipe's, flattened);
    ``source`` names the records in errors and logs."""
    started = time.time()
    rank, world_size, local_rank = init_distributed(single_process_group=training.backend != "torch")
    per_device, micro, accumulation = plan_batches(stage_cfg, world_size)
    if training.backend == "fsdp" and world_size == 1:
        log.info("fsdp backend with one process: sharding over one rank")
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(training.seed)

    init_encoder, init_meta = load_init_encoder(init_model)
    model, tokenizer = init_encoder.model, init_encoder.tokenizer
    k = stage_cfg.hard_negatives
    dropped_short = 0
    if stage_cfg.short_records == "drop":
        kept = [r for r in records if len(r.negatives) >= k]
        dropped_short = len(records) - len(kept)
        if dropped_short and rank == 0:
            log.warning("%s: dropped %d of %d records with fewer than %d hard negatives (short_records: drop)",
                        source, dropped_short, len(records), k)
        records = kept
    examples = build_examples(records, tokenizer, k, stage_cfg.max_query_length, stage_cfg.max_document_length,
                              source=source)
    if examples.truncated and rank == 0:
        log.warning("%d texts were longer than the stage's maximum length and were truncated", examples.truncated)
    loss_fn = build_loss(training.stage_loss(stage_cfg), training.temperature)
    bf16 = _precision(training, device)
    if stage_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    # Every rank loads the same file; the backends make rank 0's weights the start of all of them *on the device*
    # (DDP and DeepSpeed broadcast at construction, after placing the model). No collective may run before that:
    # NCCL takes no CPU tensors.
    backend = make_backend(training.backend, model, stage_cfg, training, device, rank, world_size, accumulation,
                           bf16, micro)
    check_on_device(backend.module, device)
    encoder = training_encoder(backend, tokenizer, stage_cfg)

    store = CheckpointStore(str(checkpoint_dir), rank, world_size) if checkpoint_dir else None
    start_step, resumed_from = 0, None
    if store and resume:
        latest = store.latest()
        if latest:
            backend.load(store.fetch(latest["name"]))
            start_step, resumed_from = int(latest["step"]), latest["name"]
            if rank == 0:
                log.info("resumed from %s (step %d)", latest["name"], start_step)

    if rank == 0:
        tracking.log_params({**(params or {}), **{f"train.{stage}.{k_}": v for k_, v in
                             stage_cfg.model_dump(mode="json").items()}, f"train.{stage}.records": len(examples),
                             f"train.{stage}.world_size": world_size})
    peak = tracking.peak_flops(device)
    history: list[dict] = []
    fault = int(os.environ.get(FAULT_ENV, "0") or 0)
    real_total = padded_total = 0
    for step in range(start_step, stage_cfg.steps):
        t0 = time.perf_counter()
        indices = step_indices(len(examples), stage_cfg.batch_size, step, training.seed)
        micro_batches = device_micro_batches(examples, indices, rank, world_size, micro)
        loss_sum, real, padded = 0.0, 0, 0
        for m, rows in enumerate(micro_batches):
            last = m == len(micro_batches) - 1
            ctx = backend.no_sync() if not last else _null()
            with ctx:
                loss, r_, p_ = micro_batch_loss(backend, encoder, loss_fn, examples, rows, k,
                                                stage_cfg.max_tokens_per_forward)
                backend.backward(loss)
            if not last:
                backend.micro_step()
            loss_sum += float(loss.detach()) / len(micro_batches)
            real, padded = real + r_, padded + p_
        lr = backend.lr
        grad_norm = backend.step()
        loss_sum, real, padded = _all_sum([loss_sum / world_size, real, padded], device)
        seconds = time.perf_counter() - t0
        real_total, padded_total = real_total + real, padded_total + padded
        metrics = {"loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": real / seconds,
                   "padding_fraction": 1 - real / max(padded, 1)}
        if peak:
            seq = real / max(stage_cfg.batch_size * (k + 2), 1)
            metrics["mfu"] = tracking.train_flops_per_token(model.config, seq) * real / seconds / (peak * world_size)
        history.append({"step": step + 1, **metrics, "seconds": round(seconds, 3)})
        if rank == 0 and ((step + 1) % stage_cfg.log_every == 0 or step + 1 == stage_cfg.steps):
            tracking.log_metrics({f"{stage}.{name}": v for name, v in metrics.items()}, step=step + 1)
            log.info("%s step %d/%d loss %.4f lr %.2e grad %.3f %.0f tok/s", stage, step + 1, stage_cfg.steps,
                     loss_sum, lr, grad_norm, metrics["tokens_per_s"])
        if store and stage_cfg.checkpoint_every and (step + 1) % stage_cfg.checkpoint_every == 0 \
                and step + 1 < stage_cfg.steps:
            store.save(step + 1, backend, {"step": step + 1, "stage": stage, "history": history[-50:]})
            if fault and step + 1 == fault:
                os.kill(os.getpid(), signal.SIGKILL)

    state = backend.full_state_dict()
    summary = {"stage": stage, "stage_name": stage_cfg.name, "steps": stage_cfg.steps, "start_step": start_step,
               "resumed_from": resumed_from, "records": len(examples), "dropped_short_records": dropped_short,
               "hard_negatives": k, "loss": training.stage_loss(stage_cfg),
               "backend": training.backend, "world_size": world_size, "batch_size": stage_cfg.batch_size,
               "micro_batch_size": micro, "accumulation": accumulation, "bf16": bf16,
               "export_dtype": "bfloat16" if bf16 and training.export_dtype == "training" else "float32",
               "init_model": str(init_model), "out_dir": str(out_dir), "truncated_texts": examples.truncated,
               "first_loss": history[0]["loss"] if history else None,
               "final_loss": history[-1]["loss"] if history else None,
               "mean_tokens_per_s": (sum(h["tokens_per_s"] for h in history) / len(history)) if history else None,
               "padding_fraction": 1 - real_total / max(padded_total, 1) if history else None,
               "history": history, "seconds": round(time.time() - started, 2)}
    summary["replica_checksums"] = _replica_checksums(backend, training.backend, device)
    if rank == 0:
        _write_export(state, model, tokenizer, init_meta, stage_cfg, out_dir, summary)
        if summary["final_loss"] is not None:  # a loss of exactly 0.0 is a value (``or`` made it NaN, then dropped)
            tracking.log_metrics({f"{stage}.final_loss": summary["final_loss"]}, step=stage_cfg.steps)
        local_out = storage.local_copy(str(out_dir)) if storage.is_remote(str(out_dir)) else Path(out_dir)
        tracking.log_model_dir(str(local_out), f"model-{stage_cfg.name}")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return summary


def _null():
    import contextlib

    return contextlib.nullcontext()


def check_on_device(module, device) -> None:
    """Every parameter and buffer of the wrapped model is on the training device, before the first collective."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2 DTensor shards
        if local.device.type != device.type or (device.index is not None and local.device.index != device.index):
            raise RuntimeError(f"training: {name} is on {local.device}, not on the training device {device}")


def _replica_checksums(backend, name: str, device) -> list[float] | None:
    """Per-rank sum of all weights (replicated backends only): equal values show the replicas stayed in sync."""
    if name != "torch":
        return None
    total = torch.tensor([sum(float(p.detach().double().sum()) for p in backend.model.parameters())],
                         dtype=torch.float64, device=device)
    if not torch.distributed.is_initialized():
        return [float(total)]
    parts = [torch.zeros_like(total) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, total)
    return [float(p) for p in parts]


def _write_export(state, model, tokenizer, init_meta, stage_cfg, out_dir, summary) -> None:
    """Load the consolidated fp32 weights into a plain CPU model and save the encoder export (local or s3://)."""
    import tempfile

    from embedpipe.encoder.modeling_bidirectional_llama import LlamaBidirectionalModel

    plain = LlamaBidirectionalModel(model.config)
    plain.load_state_dict(state)
    plain = plain.to(getattr(torch, summary["export_dtype"]))  # the config's choice (training.export_dtype)
    encoder = Encoder(plain.eval(), tokenizer, max_length=stage_cfg.max_document_length,
                      query_max_length=stage_cfg.max_query_length)
    meta = {"base_model": init_meta.get("base_model"), "training": {
        k: v for k, v in summary.items() if k not in ("history", "replica_checksums")}}
    if storage.is_remote(str(out_dir)):
        with tempfile.TemporaryDirectory() as tmp:
            encoder.save(Path(tmp) / "model", **meta)
            (Path(tmp) / "model" / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
            storage.upload(Path(tmp) / "model", str(out_dir))
    else:
        encoder.save(out_dir, **meta)
        (Path(out_dir) / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
