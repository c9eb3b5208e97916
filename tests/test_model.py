"""The transformer: fused vs explicit attention, attention maps, causality (the KV cache: test_runner.py)."""

from __future__ import annotations

import pytest
import torch

from support import random_ids, sharp_model

# ------------------------------------------------------------------ attention paths


@torch.inference_mode()
def test_fused_and_explicit_attention_agree():
    model = sharp_model()
    ids = random_ids(3, 64)
    fused, no_attn = model(ids)
    explicit, attn = model(ids, need_weights=True)
    assert no_attn is None
    assert fused.shape == (3, 64, 256)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    # the two paths are not trivially the same tensor: the logits carry signal
    assert fused.std() > 1e-3


@torch.inference_mode()
def test_attention_maps_are_causal_probabilities():
    model = sharp_model()
    B, T = 2, 37
    _, attn = model(random_ids(B, T), need_weights=True)
    assert len(attn) == model.config.n_layer
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    for layer in attn:
        assert layer.shape == (B, model.config.n_head, T, T)
        assert layer.dtype == torch.float32
        torch.testing.assert_close(layer.sum(-1), torch.ones(B, model.config.n_head, T))
        assert (layer[..., above] == 0).all(), "attention above the diagonal must be exactly zero"
        assert (layer[..., ~above] > 0).all(), "softmax gives every visible key some weight"
        assert torch.equal(layer[..., 0, 0], torch.ones(B, model.config.n_head)), "the first byte sees only itself"
        assert layer[..., 1:, :].amax(-1).mean() > 2 / T, "the test model's attention is not uniform"


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
@torch.inference_mode()
def test_changing_a_later_byte_never_changes_earlier_logits(need_weights):
    model = sharp_model()
    ids = random_ids(1, 48)
    base, _ = model(ids, need_weights=need_weights)
    for t in (0, 10, 47):
        changed = ids.clone()
        changed[0, t] = (changed[0, t] + 1) % 256
        logits, _ = model(changed, need_weights=need_weights)
        # bitwise: the same shapes, and an earlier row reads no later byte (its score is -inf, its weight 0 exactly)
        assert torch.equal(logits[:, :t], base[:, :t]), f"changing byte {t} changed earlier logits"
        assert not torch.allclose(logits[:, t], base[:, t]), f"changing byte {t} should change its own logits"
