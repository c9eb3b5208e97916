"""model/hooks.py: every hook point records what its name says, and an edit there is an edit of the forward pass.

Each recorded tensor is compared with the float64 reference (tests/reference.py, numpy from the saved weights: no
code shared with model/); an edit that changes nothing leaves the logits bitwise unchanged; editing z is ablation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import checkpoint
from model.hooks import Hooks, names, point, record, run_with_cache
from model.kv_cache import CacheSlots, KVCache
from reference import reference
from support import sharp_model

TEXT = "Hé, the cat ☃ sat on the mat!"
IDS = list(TEXT.encode())
T = len(IDS)
TOLERANCE = 2e-4  # float32 against float64 through two blocks of a sharp model (logits ~ 10)


@pytest.fixture(scope="module")
def model():
    return sharp_model(seed=5)


@pytest.fixture(scope="module")
def expected(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hooks") / "sharp"
    checkpoint.save(path, model, training={"note": "random weights, sharp attention"})
    return reference(path, IDS)


@pytest.fixture(scope="module")
def cache(model):
    logits, kept = run_with_cache(model, torch.tensor([IDS]))
    return logits, kept


def close(got: torch.Tensor, want: np.ndarray) -> bool:
    got = got.double().numpy()
    assert got.shape == want.shape, (got.shape, want.shape)
    return np.abs(got - want).max() < TOLERANCE


def test_every_point_fires_once_in_order(model):
    fired = []
    hooks = Hooks((name, lambda x, name: fired.append(name)) for name in names(model.config.n_layer))
    with torch.inference_mode():
        model(torch.tensor([IDS]), hooks=hooks)
    assert fired == names(model.config.n_layer)


def test_residual_points_match_the_reference(model, expected, cache):
    _, kept = cache
    assert close(kept["hook_embed"][0], expected.residuals[0])
    for i in range(model.config.n_layer):
        assert torch.equal(
            kept[point(i, "hook_resid_pre")], kept["hook_embed"] if i == 0 else kept[point(i - 1, "hook_resid_post")]
        )
        assert close(kept[point(i, "hook_resid_mid")][0], expected.residuals[2 * i + 1])
        assert close(kept[point(i, "hook_resid_post")][0], expected.residuals[2 * i + 2])
        assert close(kept[point(i, "hook_mlp_out")][0], expected.mlp[i])
        attn_out = expected.residuals[2 * i + 1] - expected.residuals[2 * i]
        assert close(kept[point(i, "hook_attn_out")][0], attn_out)


def test_attention_points_match_the_reference(model, expected, cache):
    _, kept = cache
    hs = model.config.head_dim
    for i in range(model.config.n_layer):
        for name in "qkv":
            assert close(kept[point(i, f"attn.hook_{name}")][0], getattr(expected, name)[i])
        assert close(kept[point(i, "attn.hook_pattern")][0], expected.probs[i])
        assert close(kept[point(i, "attn.hook_z")][0], expected.z[i])
        result = kept[point(i, "attn.hook_result")][0]  # (T, nh, C)
        assert close(result.transpose(0, 1), expected.head_writes[i])
        scores = kept[point(i, "attn.hook_attn_scores")][0]  # (nh, T, T), -inf above the diagonal
        masked = torch.ones(T, T, dtype=torch.bool).triu(1)
        assert torch.isinf(scores[:, masked]).all() and torch.isfinite(scores[:, ~masked]).all()
        q, k = expected.q[i], expected.k[i]
        want = np.where(masked.numpy(), 0.0, q @ k.transpose(0, 2, 1) / np.sqrt(hs))
        assert close(scores.masked_fill(masked, 0), want)


def test_the_logits_of_a_run_with_hooks_are_the_model_s(model, expected, cache):
    logits, _ = cache
    assert close(logits[0], expected.logits)
    with torch.inference_mode():
        plain, _ = model(torch.tensor([IDS]), need_weights=True)  # the explicit softmax everywhere, as the cache ran
    assert torch.equal(logits, plain)


@pytest.mark.parametrize("explicit", [False, True])
def test_an_edit_that_changes_nothing_leaves_the_logits_bitwise(model, explicit):
    """Every editable point given a copy of its tensor. Hooking the scores or the pattern switches a layer to the
    explicit softmax, so those are hooked only where the plain run uses it too (need_weights)."""
    switching = ("attn.hook_attn_scores", "attn.hook_pattern")
    edited_points = [n for n in names(model.config.n_layer) if "hook_result" not in n]
    if not explicit:
        edited_points = [n for n in edited_points if not n.endswith(switching)]
    ids = torch.tensor([IDS])
    with torch.inference_mode():
        plain, _ = model(ids, need_weights=explicit)
        edited, _ = model(
            ids, need_weights=explicit, hooks=Hooks((n, lambda x, name: x.clone()) for n in edited_points)
        )
    assert torch.equal(edited, plain)


def test_zeroing_z_is_switching_the_head_off(model, expected, tmp_path):
    path = tmp_path / "sharp"
    checkpoint.save(path, model, training={})
    want = reference(path, IDS, heads_off=[(1, 0)])

    def zero_head_0(z, name):
        z = z.clone()
        z[:, 0] = 0  # (B, nh, T, hs)
        return z

    with torch.inference_mode():
        logits, _ = model(torch.tensor([IDS]), hooks=Hooks([(point(1, "attn.hook_z"), zero_head_0)]))
    assert close(logits[0], want.logits)
    assert not close(logits[0], expected.logits), "head 1.0 mattered"


def test_hooks_run_in_cached_steps_too(model):
    """Prefill then one decode step through the KV cache: the keys hooked in each step are the cache's."""
    cache = KVCache(model.config, 1, torch.float32, "cpu")
    keys: dict[str, torch.Tensor] = {}
    hooks = Hooks([(point(0, "attn.hook_k"), record(keys))])
    with torch.inference_mode():
        model(torch.tensor([IDS[:-1]]), cache=cache, slots=CacheSlots(0, torch.arange(T - 1)[None]), hooks=hooks)
        assert torch.equal(cache.k[0][0, :, : T - 1], keys[point(0, "attn.hook_k")][0])
        model(torch.tensor([IDS[-1:]]), cache=cache, slots=CacheSlots(0, torch.tensor([[T - 1]])), hooks=hooks)
        assert torch.equal(cache.k[0][0, :, T - 1 : T], keys[point(0, "attn.hook_k")][0])


def test_bad_hooks_are_refused(model):
    with pytest.raises(ValueError, match="no hook point 'blocks.0.attn.hook_x'"):
        Hooks([("blocks.0.attn.hook_x", lambda x, name: None)])
    with pytest.raises(ValueError, match="no hook point 'hook_z'"):
        Hooks([("hook_z", lambda x, name: None)])
    edit_result = Hooks([(point(0, "attn.hook_result"), lambda x, name: x * 0)])
    with pytest.raises(ValueError, match="read only"), torch.inference_mode():
        model(torch.tensor([IDS]), hooks=edit_result)
