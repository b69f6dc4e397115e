"""Where the weights live and how a step updates them: plain torch (one process or DDP), FSDP2 or DeepSpeed ZeRO.

Every backend offers the same few calls to the training loop: ``module`` (what to run forward), ``backward(loss)``,
``step() -> grad norm``, ``no_sync()`` for accumulation micro-steps, ``save(dir)`` / ``load(dir)`` for exact resume,
and ``full_state_dict()`` (rank 0 gets every weight in fp32 on CPU, for the encoder export).

AdamW's weight decay is not applied to biases and norm weights (every 1-D parameter), the usual BERT/Llama practice:
decaying a norm's scale towards zero only fights the normalisation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, stage, training, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW; ``fused`` (one kernel over all parameters) for plain tensors, the per-tensor loop for sharded ones."""
    return torch.optim.AdamW(param_groups(model, stage.weight_decay), lr=stage.learning_rate,
                             betas=(training.adam_beta1, training.adam_beta2), eps=training.adam_epsilon,
                             **({"fused": True} if fused else {"foreach": False}))


def make_scheduler(optimizer, stage):
    """Linear (or cosine / constant) decay after a linear warm-up, via transformers' schedulers."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[stage.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=stage.warmup_steps, num_training_steps=stage.steps)


def _rng_state() -> dict:
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Backend:
    name = "base"

    def __init__(self, model, stage, training, device, rank: int, world_size: int, accumulation: int, bf16: bool):
        self.stage, self.training, self.device = stage, training, device
        self.rank, self.world_size, self.accumulation, self.bf16 = rank, world_size, accumulation, bf16

    # training-loop calls ------------------------------------------------------------------------------
    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def no_sync(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def micro_step(self) -> None:
        """After the backward of a micro-batch that is not the step's last (DeepSpeed counts them)."""

    def _clip(self, parameters) -> float:
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.stage.max_grad_norm or float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def step(self) -> float:
        norm = self._clip(self.module.parameters())
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    # checkpoints --------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError


class TorchBackend(Backend):
    """One process, or DDP (gloo on CPU, NCCL on GPU); every rank holds the whole model, rank 0 writes checkpoints."""

    name = "torch"

    def __init__(self, model, stage, training, device, rank, world_size, accumulation, bf16):
        super().__init__(model, stage, training, device, rank, world_size, accumulation, bf16)
        self.model = model.to(device)
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.module = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        else:
            self.module = self.model
        self.optimizer = make_optimizer(self.model, stage, training, fused=True)
        self.scheduler = make_scheduler(self.optimizer, stage)

    def no_sync(self):
        return self.module.no_sync() if self.world_size > 1 else contextlib.nullcontext()

    def save(self, directory: Path) -> None:
        if self.rank == 0:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "rng": _rng_state()}, directory / "state.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "state.pt", map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])

    def full_state_dict(self):
        if self.rank != 0:
            return None
        return {k: v.detach().float().cpu() for k, v in self.model.state_dict().items()}


class FSDPBackend(Backend):
    """FSDP2 (``fully_shard`` per decoder layer, then the root): parameters, gradients and optimizer state sharded
    over ranks; bf16 compute with fp32 gradient reduction on GPU. Checkpoints are sharded with
    ``torch.distributed.checkpoint`` (one file per rank + metadata) and consolidate on a CPU machine
    (:func:`embedpipe.training.consolidate.consolidate`)."""

    name = "fsdp"

    def __init__(self, model, stage, training, device, rank, world_size, accumulation, bf16):
        super().__init__(model, stage, training, device, rank, world_size, accumulation, bf16)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (world_size,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        model = model.to(device)
        for layer in model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        self.model = self.module = model
        self.bf16 = False  # the policy casts; no autocast on top
        self.optimizer = make_optimizer(model, stage, training)
        self.scheduler = make_scheduler(self.optimizer, stage)

    def no_sync(self):
        @contextlib.contextmanager
        def ctx():
            self.model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)

        return ctx()

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(directory / "dcp"))
        torch.save({"scheduler": self.scheduler.state_dict(), "rng": _rng_state()},
                   directory / f"extra-rank{self.rank}.pt")

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(directory / "dcp"))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        extra = torch.load(directory / f"extra-rank{self.rank}.pt", map_location="cpu", weights_only=False)
        self.scheduler.load_state_dict(extra["scheduler"])
        _set_rng_state(extra["rng"])

    def full_state_dict(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.float() for k, v in sd.items()} if self.rank == 0 else None


class DeepSpeedBackend(Backend):
    """DeepSpeed ZeRO stage 0-3 from a JSON config (``configs/deepspeed/zero3.json`` for the 8B recipe); the
    config's ``"auto"`` entries are filled from the recipe (micro batch, accumulation, clipping, bf16). On CPU
    DeepSpeed runs on its CPU accelerator with gloo."""

    name = "deepspeed"

    def __init__(self, model, stage, training, device, rank, world_size, accumulation, bf16, micro_batch_size=1):
        super().__init__(model, stage, training, device, rank, world_size, accumulation, bf16)
        import deepspeed

        config = resolve_deepspeed_config(training.deepspeed_config, micro_batch_size, accumulation,
                                          stage.max_grad_norm, bf16)
        self.zero_stage = config.get("zero_optimization", {}).get("stage", 0)
        optimizer = make_optimizer(model, stage, training)
        scheduler = make_scheduler(optimizer, stage)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
            dist_init_required=not torch.distributed.is_initialized())
        self.engine = self.module = engine
        self.optimizer, self.scheduler = optimizer, scheduler
        self.bf16 = False  # DeepSpeed casts the model itself
        self._last_norm = 0.0

    def backward(self, loss):
        self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself

    def micro_step(self) -> None:
        self.engine.step()  # a no-op for the optimizer except at the accumulation boundary

    def step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", client_state={"rng": _rng_state()})

    def load(self, directory: Path) -> None:
        _, client = self.engine.load_checkpoint(str(directory / "deepspeed"), tag="state")
        if client and "rng" in client:
            _set_rng_state(client["rng"])

    def full_state_dict(self):
        if self.zero_stage == 3:
            from deepspeed.runtime.zero.partition_parameters import GatheredParameters

            params = list(self.engine.module.parameters())
            with GatheredParameters(params, modifier_rank=None):
                sd = {k: v.detach().float().cpu().clone() for k, v in self.engine.module.state_dict().items()} \
                    if self.rank == 0 else None
            return sd
        if self.rank != 0:
            return None
        return {k: v.detach().float().cpu() for k, v in self.engine.module.state_dict().items()}


def resolve_deepspeed_config(path: str | None, micro_batch_size: int, accumulation: int,
                             max_grad_norm: float | None, bf16: bool) -> dict:
    """Read a DeepSpeed JSON config and replace its ``"auto"`` values by the recipe's."""
    if path is None:
        config: dict = {"zero_optimization": {"stage": 0}}
    else:
        file = Path(path)
        if not file.is_absolute() and not file.exists():
            file = Path(__file__).resolve().parents[2] / path
        if not file.is_file():
            raise FileNotFoundError(f"training.deepspeed_config: {path} does not exist")
        try:
            config = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: invalid JSON ({err})") from None
    fill = {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": accumulation,
            "gradient_clipping": max_grad_norm or 0.0}
    for key, value in fill.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    config.pop("train_batch_size", None)
    config["bf16"] = {"enabled": bf16}
    zero = config.setdefault("zero_optimization", {"stage": 0})
    for key in list(zero):
        if zero[key] == "auto":
            zero.pop(key)  # DeepSpeed's own defaults
    return config


BACKENDS = {"torch": TorchBackend, "fsdp": FSDPBackend, "deepspeed": DeepSpeedBackend}


def make_backend(name: str, model, stage, training, device, rank, world_size, accumulation, bf16,
                 micro_batch_size: int) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown training backend {name!r}; expected one of: {', '.join(BACKENDS)}")
    if name == "deepspeed":
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
        return DeepSpeedBackend(model, stage, training, device, rank, world_size, accumulation, bf16,
                                micro_batch_size=micro_batch_size)
    return BACKENDS[name](model, stage, training, device, rank, world_size, accumulation, bf16)
