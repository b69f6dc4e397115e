"""MLflow logging to the caller's active run (nothing is logged when there is none), and throughput/MFU figures."""

from __future__ import annotations

import logging

from embedpipe import tracking

log = logging.getLogger(__name__)

# dense bf16 peak FLOP/s per GPU (no sparsity), for MFU
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def active_run():
    """The active MLflow run or None (the guard is embedpipe.tracking.active)."""
    if not tracking.active():
        return None
    import mlflow

    return mlflow.active_run()


log_params = tracking.log_params  # one log_params for every area (skips keys the run already holds)


def log_metrics(metrics: dict[str, float], step: int) -> None:
    tracking.log_metrics(metrics, step=step)


def log_model_dir(local_dir: str, artifact_path: str) -> None:
    if not tracking.active():
        return
    import mlflow

    mlflow.log_artifacts(local_dir, artifact_path=artifact_path)


def peak_flops(device) -> float | None:
    """The GPU's dense bf16 peak, or None (CPU, unknown GPU): MFU is only reported where it means something."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def train_flops_per_token(config, seq_len: float) -> float:
    """6 N (weight matmuls, forward + backward) + 12 L d s (attention scores and values), per token (PaLM app. B)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    inter, heads, kv = config.intermediate_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = d // heads
    per_layer = d * (heads * head_dim) + 2 * d * (kv * head_dim) + (heads * head_dim) * d + 3 * d * inter
    return 6 * layers * per_layer + 12 * layers * d * seq_len
