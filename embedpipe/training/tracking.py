"""MLflow logging to the caller's active run (nothing is logged when there is none), and throughput/MFU figures."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# dense bf16 peak FLOP/s per GPU (no sparsity), for MFU
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def active_run():
    try:
        import mlflow
    except ImportError:  # pragma: no cover - a dependency
        return None
    return mlflow.active_run()


def log_params(params: dict[str, object]) -> None:
    """Log parameters, skipping keys the run already holds (a pipeline run may have logged the recipe)."""
    if active_run() is None:
        return
    import mlflow

    existing = mlflow.get_run(active_run().info.run_id).data.params
    fresh = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
    items = list(fresh.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))


def log_metrics(metrics: dict[str, float], step: int) -> None:
    if active_run() is None:
        return
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_model_dir(local_dir: str, artifact_path: str) -> None:
    if active_run() is None:
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
