"""Write an encoder directory that loads three ways: our ``Encoder``, ``AutoModel`` (remote code) and
``SentenceTransformer`` (modules.json: Transformer -> mean Pooling -> Normalize)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from embedpipe.encoder.modeling_bidirectional_llama import LlamaBidirectionalModel

EXPORT_MARKER = "embedpipe.json"  # the file that makes a folder an encoder export

FORMAT_VERSION = 1


def save_encoder(
    model: LlamaBidirectionalModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    max_length: int = 512,
    query_max_length: int | None = None,
    max_shard_size: str = "5GB",
    **metadata,
) -> Path:
    """Save weights (safetensors), tokenizer, the modeling file (``auto_map``), sentence-transformers modules."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.is_causal = False
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out)
    write_sentence_transformers_modules(out, model.config.hidden_size, max_length)
    meta = {
        "format": "embedpipe-encoder",
        "format_version": FORMAT_VERSION,
        "pooling": "mean",
        "normalize": True,
        "max_length": max_length,
        "query_max_length": query_max_length or max_length,
        "query_template": "Instruct: {instruction}\nQuery: {text}",
        **metadata,
    }
    (out / EXPORT_MARKER).write_text(json.dumps(meta, indent=2, default=str))
    return out


def write_sentence_transformers_modules(out: Path, dimension: int, max_length: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2)
    )
    pooling = out / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dimension, "pooling_mode_mean_tokens": True,
                    "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False,
                    "pooling_mode_lasttoken": False, "include_prompt": True}, indent=2)
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "", "document": ""}, "default_prompt_name": None,
                    "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"}, indent=2)
    )


def copy_export_extras(src: str | Path, dst: str | Path) -> None:
    """Copy tokenizer, modeling code and sentence-transformers files (not weights) from one export to another."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.suffix == ".safetensors" or item.name.endswith(".safetensors.index.json"):
            continue
        target = dst / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
