"""Turn a training checkpoint of any backend into an encoder export, on a CPU machine with no process group.

- torch: ``state.pt`` (full state dict, written by rank 0)
- FSDP2: ``dcp/`` (torch.distributed.checkpoint shards) -> ``dcp_to_torch_save``
- DeepSpeed: ``deepspeed/state/`` (ZeRO shards) -> DeepSpeed's own ``zero_to_fp32`` consolidation

The model config and tokenizer come from ``init_model`` (the export or base checkpoint the run started from).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def checkpoint_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 model weights held by one checkpoint folder (``<checkpoint_dir>/step-N``)."""
    path = Path(checkpoint)
    if (path / "state.pt").is_file():
        return torch.load(path / "state.pt", map_location="cpu", weights_only=False)["model"]
    if (path / "dcp").is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "full.pt"
            dcp_to_torch_save(str(path / "dcp"), str(target))
            state = torch.load(target, map_location="cpu", weights_only=False)
        return {k: v.float() for k, v in state["model"].items()}
    if (path / "deepspeed").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(path / "deepspeed"), tag="state")
    raise FileNotFoundError(f"{path} holds no training checkpoint (state.pt, dcp/ or deepspeed/)")


def consolidate(checkpoint: str | Path, init_model: str | Path, out_dir: str | Path,
                max_length: int = 512, query_max_length: int | None = None) -> Path:
    """Checkpoint folder -> encoder export at ``out_dir``."""
    from embedpipe.encoder.encoder import Encoder
    from embedpipe.encoder.modeling_bidirectional_llama import LlamaBidirectionalModel
    from embedpipe.training.run import load_init_encoder

    template, meta = load_init_encoder(init_model)
    tokenizer = template.tokenizer
    model = LlamaBidirectionalModel(template.model.config)
    missing, unexpected = model.load_state_dict(checkpoint_state_dict(checkpoint), strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: weights do not match {init_model}'s architecture "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    encoder = Encoder(model.eval(), tokenizer, max_length=max_length, query_max_length=query_max_length)
    return encoder.save(out_dir, base_model=meta.get("base_model"), consolidated_from=str(checkpoint))
