"""The transformer: fused vs explicit attention, attention maps, causality and the KV cache."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from model.generate import decode_one, prefill
from model.tokenizer import ByteTokenizer

TEXT = "Hé! naïve café — 日本語 🙂 ok\n"  # 1-, 2-, 3- and 4-byte characters


def sharp_model(seed: int = 0):
    """A tiny random model whose attention is far from uniform (at init it is nearly uniform, which would
    hide mistakes in masks, positions and the cache): queries and keys scaled up tenfold."""
    model = tiny_model(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(10)
            layer.self_attn.k_proj.weight.mul_(10)
    return model


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def cached_logits(model, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Prefill ids[:, :prompt_len], then one-token decode steps for the rest; all logits, (B, T, vocab)."""
    B, T = ids.shape
    out = [prefill(model, ids[:, :prompt_len])[0]]
    for i in range(prompt_len, T):
        out.append(decode_one(model, ids[:, i:i + 1], torch.full((B, 1), i, device=ids.device))[0])
    return torch.cat(out, dim=1)


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
        assert torch.equal(logits[:, :t], base[:, :t]), f"changing byte {t} changed earlier logits"
        assert not torch.allclose(logits[:, t], base[:, t]), f"changing byte {t} should change its own logits"


# ------------------------------------------------------------------ KV cache

@pytest.mark.parametrize("prompt_len", [1, 2, 7, 31, 63, 64])
def test_cache_matches_full_forward(prompt_len):
    """Prefill `prompt_len` bytes, decode the rest one byte at a time up to the full context."""
    model = sharp_model()
    ids = random_ids(1, 64, seed=prompt_len)
    model.setup_caches(batch=1)
    with torch.inference_mode():
        full, _ = model(ids)
    torch.testing.assert_close(cached_logits(model, ids, prompt_len), full, rtol=1e-5, atol=1e-5)


def test_cache_matches_full_forward_on_multibyte_text():
    model = sharp_model()
    ids = torch.tensor([ByteTokenizer().encode(TEXT * 2)[:64]])
    model.setup_caches(batch=1)
    with torch.inference_mode():
        full, _ = model(ids)
    # prompts ending inside a multi-byte character too: bytes are tokens, the cache must not care
    for prompt_len in (3, 4, 5, 20):
        torch.testing.assert_close(cached_logits(model, ids, prompt_len), full, rtol=1e-5, atol=1e-5)


def test_cache_attention_rows_match_full_attention():
    model = sharp_model()
    ids = random_ids(1, 20)
    model.setup_caches(batch=1)
    with torch.inference_mode():
        _, full = model(ids, need_weights=True)
        prefill(model, ids[:, :12])
        _, step = decode_one(model, ids[:, 12:13], torch.tensor([[12]]), need_weights=True)
    for layer_full, layer_step in zip(full, step):
        assert layer_step.shape == (1, model.config.n_head, 1, 64)  # keys span the whole cache
        torch.testing.assert_close(layer_step[0, :, 0, :13], layer_full[0, :, 12, :13], rtol=1e-5, atol=1e-6)
        assert (layer_step[0, :, 0, 13:] == 0).all(), "keys after the query's position are masked"


def test_cache_is_written_in_place_and_never_reallocated():
    model = sharp_model()
    model.setup_caches(batch=2)
    before = [(c.k.shape, c.k.data_ptr(), c.v.shape, c.v.data_ptr()) for c in model.caches]
    ids = random_ids(2, 40)
    cached_logits(model, ids, 16)
    after = [(c.k.shape, c.k.data_ptr(), c.v.shape, c.v.data_ptr()) for c in model.caches]
    assert after == before
    assert model.caches[0].k.shape == (2, model.config.n_head, 64, model.config.head_dim)
    assert model.caches[0].k[:, :, :40].abs().sum() > 0, "the cache was written"
    assert model.caches[0].k[:, :, 40:].abs().sum() == 0, "nothing past the last position was written"
    # caches are not part of the checkpoint
    assert not any(name.startswith("caches") for name in model.state_dict())


def test_cache_rows_at_different_positions_match_their_own_full_forward():
    """Rows of one batch decode at their own positions (input_pos per row)."""
    model = sharp_model()
    lengths = [5, 19, 11]
    seqs = [random_ids(1, n + 8, seed=n)[0] for n in lengths]  # each row's prompt, then 8 more bytes
    B, longest = len(lengths), max(lengths)
    model.setup_caches(batch=B)
    padded = torch.zeros(B, longest, dtype=torch.long)
    for r, (s, n) in enumerate(zip(seqs, lengths)):
        padded[r, :n] = s[:n]  # bytes past a row's prompt are padding, overwritten later, masked until then
    with torch.inference_mode():
        prefill(model, padded)
        steps = []
        for k in range(8):
            tok = torch.stack([s[n + k] for s, n in zip(seqs, lengths)]).unsqueeze(1)  # (B, 1)
            pos = torch.tensor([[n + k] for n in lengths])  # (B, 1): a different position per row
            steps.append(decode_one(model, tok, pos)[0][:, 0])  # (B, vocab)
        for r, (s, n) in enumerate(zip(seqs, lengths)):
            full, _ = model(s.unsqueeze(0))
            for k in range(8):
                torch.testing.assert_close(steps[k][r], full[0, n + k], rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"row {r}, step {k}: {m}")


def test_cache_longer_than_context_is_refused():
    model = sharp_model()
    with pytest.raises(AssertionError, match="exceeds context"):
        model.setup_caches(batch=1, max_len=65)


# ------------------------------------------------------------------ on a GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.03)], ids=["float32", "bfloat16"])
def test_gpu_cache_and_attention_paths_agree(dtype, tol):
    model = sharp_model().to("cuda", dtype)
    ids = random_ids(2, 64).cuda()
    with torch.inference_mode():
        fused, _ = model(ids)
        explicit, attn = model(ids, need_weights=True)
        ref, _ = sharp_model()(ids.cpu())  # the same weights in float32 on the CPU
    ref = ref.to(fused.device)
    torch.testing.assert_close(fused.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(explicit.float(), fused.float(), rtol=tol, atol=tol)
    for layer in attn:
        torch.testing.assert_close(layer.sum(-1), torch.ones_like(layer.sum(-1)), rtol=1e-3, atol=1e-3)
        assert (layer.triu(1) == 0).all()
    model.setup_caches(batch=2)
    ptr = model.caches[0].k.data_ptr()
    for prompt_len in (1, 17, 64):
        cached = cached_logits(model, ids, prompt_len)
        torch.testing.assert_close(cached.float(), fused.float(), rtol=tol, atol=tol)
    assert model.caches[0].k.data_ptr() == ptr
