"""Teachers: the embedding models whose similarities rank negative candidates.

A teacher is a sentence-transformers model (with its query/document prompts) or an embedpipe encoder export
(detected by ``embedpipe.json``; queries get the ``Instruct: ...\\nQuery: ...`` template). Each one has an
``identity`` (what its embeddings depend on: the cache key) and a ``fingerprint`` of its weight files (to refuse a
cache written by other weights at the same path).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedpipe.mining.config import TeacherConfig

log = logging.getLogger(__name__)

INSTRUCTION_FIELD = "{instruction}"


def _device(use_gpu: str) -> str:
    import torch

    return "cuda" if use_gpu == "auto" and torch.cuda.is_available() else "cpu"


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        name = "bf16" if device == "cuda" else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def weights_fingerprint(path: str) -> str | None:
    """Names, sizes and modification times of a local model's weight files (None for a hub name)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".gguf") and p.is_file())
    parts = [f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class Teacher:
    """Common interface: ``encode_queries(texts, instructions)`` and ``encode_documents(texts)`` -> unit-norm float32."""

    kind = "teacher"

    def __init__(self, config: TeacherConfig, path: str, batch_size: int):
        self.config = config
        self.path = path
        self.batch_size = batch_size
        self.weight = config.weight
        self.dtype = None

    @property
    def dimension(self) -> int:
        raise NotImplementedError

    @property
    def identity(self) -> dict:
        """Everything a document embedding depends on; the chunk cache is keyed by its hash."""
        return {"kind": self.kind, "model": self.path, "document_prompt": self.config.document_prompt,
                "max_length": self.config.max_length, "dtype": str(self.dtype)}

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(self.path).name or self.path)[:48]
        return f"{slug}-{digest}"

    @property
    def fingerprint(self) -> str | None:
        return weights_fingerprint(self.path)

    def encode_queries(self, texts: Sequence[str], instructions: Sequence[str | None]) -> np.ndarray:
        """Encode queries grouped by instruction (one prompt per group), in the input order."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, instruction in enumerate(instructions):
            groups[instruction].append(i)
        for instruction, idx in groups.items():
            out[idx] = self._encode_queries([texts[i] for i in idx], instruction)
        return out

    def _encode_queries(self, texts: list[str], instruction: str | None) -> np.ndarray:
        raise NotImplementedError

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def _query_prompt(self, instruction: str | None) -> str | None:
        prompt = self.config.query_prompt
        if prompt is not None and INSTRUCTION_FIELD in prompt:
            return prompt.replace(INSTRUCTION_FIELD, instruction or "")
        return prompt


class SentenceTransformerTeacher(Teacher):
    kind = "sentence-transformers"

    def __init__(self, config: TeacherConfig, path: str, batch_size: int, device: str):
        super().__init__(config, path, batch_size)
        from sentence_transformers import SentenceTransformer

        self.dtype = _torch_dtype(config.dtype, device)
        self.model = SentenceTransformer(path, device=device, model_kwargs={"dtype": self.dtype})
        if config.max_length:
            self.model.max_seq_length = config.max_length
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self._dimension = int(get_dim())

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def identity(self) -> dict:
        # A model without its own prompts embeds with prompt None; a configured prompt overrides the model's.
        return {**super().identity, "max_seq_length": self.model.max_seq_length,
                "model_document_prompt": self.model.prompts.get("document")}

    def _encode_queries(self, texts: list[str], instruction: str | None) -> np.ndarray:
        return self.model.encode_query(texts, prompt=self._query_prompt(instruction), batch_size=self.batch_size,
                                       normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False).astype(np.float32, copy=False)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode_document(list(texts), prompt=self.config.document_prompt, batch_size=self.batch_size,
                                          normalize_embeddings=True, convert_to_numpy=True,
                                          show_progress_bar=False).astype(np.float32, copy=False)


class EncoderTeacher(Teacher):
    """The project's own bidirectional encoder export (e.g. a stage-1 model mining for stage 2)."""

    kind = "embedpipe-encoder"

    def __init__(self, config: TeacherConfig, path: str, batch_size: int, device: str):
        super().__init__(config, path, batch_size)
        from embedpipe.encoder import Encoder

        self.dtype = _torch_dtype(config.dtype, device)
        self.encoder = Encoder.from_pretrained(path, device=device, dtype=self.dtype, max_length=config.max_length)

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    def _encode_queries(self, texts: list[str], instruction: str | None) -> np.ndarray:
        prompt = self._query_prompt(instruction)
        if prompt is not None:
            return self.encoder.encode([prompt + t for t in texts], batch_size=self.batch_size,
                                       max_length=self.encoder.query_max_length)
        return self.encoder.encode_queries(texts, instruction, batch_size=self.batch_size)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        if self.config.document_prompt:
            return self.encoder.encode([self.config.document_prompt + t for t in texts], batch_size=self.batch_size)
        return self.encoder.encode_documents(list(texts), batch_size=self.batch_size)


def load_teacher(config: TeacherConfig, batch_size: int = 64, use_gpu: str = "auto") -> Teacher:
    """An encoder export (has ``embedpipe.json``) -> EncoderTeacher; anything else -> sentence-transformers."""
    from embedpipe.assets import resolve_model
    from embedpipe.encoder.encoder import EXPORT_MARKER

    path = resolve_model(config.model)
    local = Path(path)
    if local.exists():
        path = str(local.resolve())
    device = _device(use_gpu)
    if local.is_dir() and (local / EXPORT_MARKER).is_file():
        teacher: Teacher = EncoderTeacher(config, path, batch_size, device)
    else:
        if not local.exists() and ("/" not in config.model or config.model.startswith((".", "/"))):
            raise FileNotFoundError(f"mining teacher {config.model!r}: no such model folder (and not a hub id)")
        teacher = SentenceTransformerTeacher(config, path, batch_size, device)
    log.info("teacher %s (%s, dim %d)", config.model, teacher.kind, teacher.dimension)
    return teacher
