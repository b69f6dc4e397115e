"""Bidirectional Llama encoder (llama-embed-nemotron style).

This file is self-contained (it imports only torch and transformers) because it is copied into every
exported model directory and referenced from ``config.json``'s ``auto_map``: ``AutoModel.from_pretrained(dir,
trust_remote_code=True)`` and ``SentenceTransformer(dir, trust_remote_code=True)`` load it from there.

The causal mask is replaced by transformers' own ``masking_utils.create_bidirectional_mask`` (a full mask over
non-padding tokens) and every attention module is flagged non-causal, so SDPA / flash kernels do not fall back to
``is_causal=True`` when no padding mask is needed.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPast


class LlamaBidirectionalConfig(LlamaConfig):
    """A Llama config whose attention is bidirectional; ``is_causal`` is False so servers that honour it embed right."""

    model_type = "llama_bidirectional"

    def __init__(self, pooling: str = "mean", **kwargs):
        self.pooling = pooling
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)
        self.is_causal = False


class LlamaBidirectionalModel(LlamaModel):
    """``LlamaModel`` with full attention over non-padding tokens in every layer; all weights trainable."""

    config_class = LlamaBidirectionalConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        config.is_causal = False
        for layer in self.layers:
            layer.self_attn.is_causal = False

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        for name in ("cache", "past_key_values", "use_cache", "return_dict", "output_attentions"):
            kwargs.pop(name, None)
        output_hidden_states = bool(kwargs.pop("output_hidden_states", False))
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = _positions(attention_mask, inputs_embeds)
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden = [hidden_states] if output_hidden_states else None
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                is_causal=False,
                **kwargs,
            )
            if isinstance(hidden_states, tuple):
                hidden_states = hidden_states[0]
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


def _positions(attention_mask: torch.Tensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded text gets the same rotary phases as when it stands alone."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens (padding on either side); computed in fp32 for stable sums under bf16."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (last_hidden_state.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1.0)


LlamaBidirectionalConfig.register_for_auto_class()
LlamaBidirectionalModel.register_for_auto_class("AutoModel")
if __name__.startswith("embedpipe."):  # not in the copy shipped with an export (loaded as remote code)
    from transformers import AutoConfig, AutoModel

    try:  # AutoModel.from_pretrained on an export resolves "llama_bidirectional" in this process without remote code
        AutoConfig.register("llama_bidirectional", LlamaBidirectionalConfig)
        AutoModel.register(LlamaBidirectionalConfig, LlamaBidirectionalModel)
    except ValueError:  # already registered (module re-imported)
        pass
