"""The mteb encoder protocol for an embedpipe encoder export.

llama-embed-nemotron-8b is evaluated as it was trained: retrieval-like tasks are bi-encoder (instructed queries, plain
documents), everything else is uni-encoder (every text instructed). The instruction for a task comes, in order, from
an explicit table (recipe / local task config), the task's own metadata prompt, then embedpipe's per-type table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from embedpipe.encoder.instructions import default_instruction, format_query, is_uni_encoder

log = logging.getLogger(__name__)


def _abs_encoder():
    from mteb.models.abs_encoder import AbsEncoder

    return AbsEncoder


class EmbedpipeEncoder(_abs_encoder()):
    """mteb ``EncoderProtocol`` around :class:`embedpipe.encoder.Encoder`; the weights load on first use, so a re-run
    whose results are all cached never loads the model."""

    def __init__(
        self,
        model_dir: str | Path,
        model_name: str,
        revision: str,
        instructions: dict[str, str] | None = None,
        device: str | None = None,
        precision: str = "fp32",
    ):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        from embedpipe.encoder.encoder import read_export_metadata

        self.model_dir = Path(model_dir)
        meta = read_export_metadata(self.model_dir)
        self.instructions = dict(instructions or {})
        self.device = device
        # evaluation.precision: "auto" encodes retrieval corpora (where the time goes) under bf16 autocast on a CPU with
        # native bf16, and queries and every uni-encoder text in fp32: bf16 moves short texts most (a 3-token text's
        # vector to cosine 0.73 of its fp32 one; 651 PydocRetrieval passages: >= 0.989)
        self.precision = precision
        self.bf16_corpus = False
        self._encoder = None
        self.encoded_texts = 0
        self.max_length = int(meta.get("max_length", 512))
        self.query_max_length = int(meta.get("query_max_length") or self.max_length)
        self.mteb_model_meta = ModelMeta.create_empty(overwrites={
            "name": model_name,
            "revision": revision,
            "max_tokens": float(self.max_length),
            "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True,
            "framework": ["PyTorch"],
            "reference": None,
        })

    @property
    def encoder(self):
        if self._encoder is None:
            from embedpipe.encoder import Encoder
            from embedpipe.encoder.encoder import cpu_has_native_bf16

            self._encoder = Encoder.from_pretrained(self.model_dir, device=self.device)
            self.bf16_corpus = (self.precision == "auto" and self._encoder.device.type == "cpu"
                                and cpu_has_native_bf16())
        return self._encoder

    # mteb's AbsEncoder.similarity falls back to ``self.model.similarity``; cosine is set on the meta instead
    @property
    def model(self):
        return self.encoder

    def instruction(self, task_metadata) -> str:
        """Explicit table (by task name, then task type) -> the task's metadata prompt -> embedpipe's type table."""
        from embedpipe.evaluation.tasks import embedpipe_type

        for key in (task_metadata.name, task_metadata.type):
            if key in self.instructions:
                return self.instructions[key]
        prompt = task_metadata.prompt
        if isinstance(prompt, dict):
            prompt = prompt.get("query")
        if prompt:
            return prompt
        return default_instruction(embedpipe_type(task_metadata.type))

    def format_texts(self, texts: list[str], task_metadata, prompt_type) -> tuple[list[str], str]:
        """The texts as the model reads them and their side: ``corpus`` (a bi-encoder task's documents, unprefixed),
        ``query`` (its queries, with the query length limit) or ``text`` (a uni-encoder task's, all prefixed)."""
        from mteb.types import PromptType

        from embedpipe.evaluation.tasks import embedpipe_type

        kind = embedpipe_type(task_metadata.type)
        instruction = self.instruction(task_metadata)
        if not is_uni_encoder(kind) and prompt_type == PromptType.document:
            return texts, "corpus"
        return [format_query(t, instruction) for t in texts], "text" if is_uni_encoder(kind) else "query"

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs: Any):
        texts = [text for batch in inputs for text in batch["text"]]
        formatted, side = self.format_texts(texts, task_metadata, prompt_type)
        # an empty document (some public corpora have them) is read as the end-of-text token alone
        empty = [i for i, t in enumerate(formatted) if not t.strip()]
        if empty:
            log.warning("%s: %d empty texts encoded as the end-of-text token", task_metadata.name, len(empty))
            filler = self.encoder.tokenizer.eos_token or "."
            formatted = [filler if not t.strip() else t for t in formatted]
        self.encoded_texts += len(formatted)
        if not formatted:
            return np.zeros((0, self.encoder.dimension), dtype=np.float32)
        encoder = self.encoder
        encoder.autocast_bf16 = self.bf16_corpus and side == "corpus"
        return encoder.encode(
            formatted,
            batch_size=int(kwargs.get("batch_size", 32)),
            max_length=self.query_max_length if side == "query" else self.max_length,
            show_progress_bar=False,
        )
