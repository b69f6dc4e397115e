"""The bidirectional encoder: attention really is bidirectional, pooling ignores padding, outputs are unit vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaModel

from embedpipe.encoder import Encoder, LlamaBidirectionalModel, mean_pool


@pytest.fixture(scope="module")
def tiny(tiny_encoder):
    return Encoder.from_pretrained(tiny_encoder, device="cpu")


def _first_token_state(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_last_token_changes_first_state_only_when_bidirectional(tiny_llama, tiny, batch_size):
    causal = LlamaModel.from_pretrained(str(tiny_llama)).eval()
    ids = torch.randint(10, 1000, (batch_size, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 7) % 1000 + 10
    bi_before, bi_after = _first_token_state(tiny.model, ids), _first_token_state(tiny.model, changed)
    ca_before, ca_after = _first_token_state(causal, ids), _first_token_state(causal, changed)
    assert (bi_before - bi_after).abs().max() > 1e-4, "encoder's first token ignored the last token"
    torch.testing.assert_close(ca_before, ca_after, rtol=0, atol=1e-6)
    # the two models share every weight: the only difference is the mask
    torch.testing.assert_close(tiny.model.embed_tokens.weight, causal.embed_tokens.weight)


def test_every_attention_layer_is_flagged_non_causal(tiny):
    assert tiny.model.config.is_causal is False
    assert all(layer.self_attn.is_causal is False for layer in tiny.model.layers)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(tiny, side):
    texts = ["short text", "a considerably longer text that forces padding onto the short one in the batch", "mid"]
    alone = np.stack([tiny.encode([t])[0] for t in texts])
    tiny.tokenizer.padding_side = side
    try:
        batch = tiny.tokenize(texts)
        assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
        with torch.no_grad():
            padded = tiny.embed(batch).numpy()
    finally:
        tiny.tokenizer.padding_side = "right"
    np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_mean_pool_ignores_padding_positions():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    left = torch.tensor([[[100.0, 100.0], [1.0, 1.0], [3.0, 5.0]]])
    torch.testing.assert_close(mean_pool(left, torch.tensor([[0, 1, 1]])), torch.tensor([[2.0, 3.0]]))


def test_encode_is_unit_norm_and_order_preserving(tiny):
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(23)]
    vectors = tiny.encode(texts, batch_size=4)
    assert vectors.shape == (23, tiny.dimension) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[5], tiny.encode([texts[5]])[0], atol=1e-5)
    ids = tiny.tokenizer(texts, add_special_tokens=True)["input_ids"]  # the server's path: tokenised once, by itself
    np.testing.assert_array_equal(tiny.encode_token_ids(ids, batch_size=4), vectors)
    before = tiny.truncated_count
    short = tiny.encode_token_ids(ids, batch_size=4, max_length=3)
    assert tiny.truncated_count - before == sum(len(x) > 3 for x in ids)
    np.testing.assert_allclose(short[0], tiny.encode([texts[0]], max_length=3)[0], atol=1e-6)


def test_gradients_reach_every_layer(tiny_encoder):
    encoder = Encoder.from_pretrained(tiny_encoder, device="cpu")
    encoder.model.train()
    emb = encoder.embed(encoder.tokenize(["a query", "a document that is longer"]))
    (emb[0] @ emb[1]).backward()
    for name, param in encoder.model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for {name}"


def test_smollm2_encoder_is_bidirectional_with_real_weights(smollm2_encoder):
    model = LlamaBidirectionalModel.from_pretrained(str(smollm2_encoder)).eval()
    tok = AutoTokenizer.from_pretrained(str(smollm2_encoder))
    ids = tok(["the cat sat on the mat"], return_tensors="pt")["input_ids"]
    changed = ids.clone()
    changed[0, -1] = tok.convert_tokens_to_ids("Ġdog") if tok.convert_tokens_to_ids("Ġdog") else 100
    assert (_first_token_state(model, ids) - _first_token_state(model, changed)).abs().max() > 1e-4
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
