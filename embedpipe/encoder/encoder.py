"""The encoder every step shares: tokenise, run the bidirectional Llama, mean-pool, L2-normalise."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from embedpipe.encoder.export import EXPORT_MARKER, save_encoder
from embedpipe.encoder.instructions import format_document, format_query
from embedpipe.encoder.modeling_bidirectional_llama import LlamaBidirectionalModel, mean_pool

log = logging.getLogger(__name__)



class NotAnEncoderExport(ValueError):
    """Raised for a directory that lacks the files of an embedpipe encoder export."""


def check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    """Refuse empty or non-string texts, naming the first offending index."""
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, got a single string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] is {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"{what}[{i}] is empty")
    return out


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX, as oneDNN detects them)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow there), bf16 on GPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Encoder:
    """Bidirectional Llama encoder with instruction formatting and length-sorted batched encoding.

    ``embed`` keeps the autograd graph (training); ``encode`` is the inference path (no grad, numpy out).
    """

    def __init__(
        self,
        model: LlamaBidirectionalModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 512,
        query_max_length: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.max_length = max_length
        self.query_max_length = query_max_length or max_length
        self.truncated_count = 0
        # encode under bf16 autocast over the loaded weights (an fp32 model on a CPU with native bf16: about 1.6x
        # fp32's throughput on this project's AVX512-BF16 machines; most vectors stay within cosine 0.99 of fp32's,
        # very short texts move most: benchmarks/bench_encode.py --bf16)
        self.autocast_bf16 = False

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_length: int | None = None,
    ) -> Encoder:
        """Load an encoder export written by :func:`embedpipe.encoder.export.save_encoder`."""
        meta = read_export_metadata(path)
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        model = LlamaBidirectionalModel.from_pretrained(str(path), dtype=dtype).to(device)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(
            model,
            tokenizer,
            max_length=max_length or meta.get("max_length", 512),
            query_max_length=max_length or meta.get("query_max_length"),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    # ---------------------------------------------------------------- tokenising
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Pad to the longest text in the batch, truncate to ``max_length`` and count what was cut."""
        texts = check_texts(texts)
        max_length = max_length or self.max_length
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return self._pad([self._truncate(x, max_length) for x in ids])

    def _truncate(self, ids: list[int], max_length: int) -> list[int]:
        if len(ids) > max_length:
            self.truncated_count += 1
            return ids[:max_length]
        return ids

    def _pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device)}

    # ---------------------------------------------------------------- forward
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward with gradients: last hidden states -> mean over real tokens -> L2 normalisation."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pooled = mean_pool(out.last_hidden_state, batch["attention_mask"])
        return F.normalize(pooled, p=2, dim=-1)

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Encode texts in batches of similar token length (little padding); returns float32 (n, dim), unit norm."""
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return self.encode_token_ids(ids, batch_size, max_length, show_progress_bar)

    @torch.inference_mode()
    def encode_token_ids(
        self,
        ids: Sequence[list[int]],
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """:meth:`encode` from this tokenizer's ids (with special tokens), for a caller that already tokenised: the
        server counts usage tokens from the same ids instead of tokenising every batch twice."""
        if not ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        max_length = max_length or self.max_length
        before = self.truncated_count
        ids = [self._truncate(list(x), max_length) for x in ids]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        if show_progress_bar is None:
            show_progress_bar = len(ids) >= 2000
        starts = range(0, len(ids), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        was_training = self.model.training
        self.model.eval()
        try:
            for start in starts:
                idx = order[start : start + batch_size]
                batch = self._pad([ids[i] for i in idx])
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
                    out[idx] = self.embed(batch).float().cpu().numpy()
        finally:
            self.model.train(was_training)  # encoding mid-training (e.g. a dev score) leaves the mode as it was
        cut = self.truncated_count - before
        if cut:
            log.warning("%d of %d texts were longer than %d tokens and were truncated", cut, len(ids), max_length)
        return out

    def encode_queries(self, texts: Sequence[str], instruction: str | None, **kwargs) -> np.ndarray:
        texts = check_texts(texts, "queries")
        kwargs.setdefault("max_length", self.query_max_length)
        return self.encode([format_query(t, instruction) for t in texts], **kwargs)

    def encode_documents(
        self, texts: Sequence[str], instruction: str | None = None, task_type: str = "retrieval", **kwargs
    ) -> np.ndarray:
        texts = check_texts(texts, "documents")
        return self.encode([format_document(t, instruction, task_type) for t in texts], **kwargs)

    def save(self, out_dir: str | Path, **metadata) -> Path:

        return save_encoder(self.model, self.tokenizer, out_dir, max_length=self.max_length,
                            query_max_length=self.query_max_length, **metadata)


def read_export_metadata(path: str | Path) -> dict:
    """Read ``embedpipe.json``; a clear error when ``path`` is missing or is not an encoder export."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if not path.is_dir():
        raise NotAnEncoderExport(f"{path} is a file; an encoder export is a directory")
    marker = path / EXPORT_MARKER
    if not marker.is_file():
        raise NotAnEncoderExport(
            f"{path} is not an embedpipe encoder export (no {EXPORT_MARKER}); create one with `embedpipe convert`"
        )
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError as err:
        raise NotAnEncoderExport(f"{marker}: invalid JSON ({err})") from None
