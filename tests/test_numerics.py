"""model.numerics: log-softmax, the sampler's probabilities and its noise's logarithm in fixed-order arithmetic
(model/native/numerics.h), close to float64 references, and the torch fallback named in the fingerprint.
Bitwise agreement across CPUs is tests/test_cpu_numerics.py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import numerics

pytestmark = pytest.mark.native  # fails instead of skipping under TINYLLM_REQUIRE_NATIVE=1 (conftest.py)


def random_logits(seed: int, rows: int = 8, n: int = 256, scale: float = 4.0) -> torch.Tensor:
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(seed)) * scale


def test_log_softmax_is_within_an_ulp_of_float64():
    for seed, scale in [(0, 1.0), (1, 4.0), (2, 40.0)]:
        logits = random_logits(seed, scale=scale)
        ours = numerics.log_softmax(logits)
        exact = torch.log_softmax(logits.double(), -1)
        ulp = torch.finfo(torch.float32).eps * exact.abs().clamp(min=torch.finfo(torch.float32).tiny)
        assert ((ours.double() - exact).abs() <= ulp).all(), f"seed {seed}"
        assert ours.shape == logits.shape and ours.dtype == torch.float32


def test_softmax_is_close_to_float64_and_sums_to_one():
    logits = random_logits(3)
    ours = numerics.softmax(logits)
    torch.testing.assert_close(ours.double(), torch.softmax(logits.double(), -1), rtol=2.4e-7, atol=1e-30)
    torch.testing.assert_close(ours.double().sum(-1), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-6)


def test_log_softmax_keeps_torchs_special_values():
    rows = torch.tensor(
        [[0.0, float("-inf"), 1.0], [float("nan"), 0.0, 1.0], [float("-inf")] * 3, [float("inf"), 0.0, 1.0]]
    )
    ours = numerics.log_softmax(rows)
    assert ours[0, 1] == float("-inf") and torch.isfinite(ours[0, [0, 2]]).all()
    assert torch.isnan(ours[1:]).all(), "NaN, a row of -inf and an infinite logit give NaN, as torch's"
    assert torch.isnan(torch.log_softmax(rows, -1)[1:]).all()


def test_the_noise_logarithm_is_within_an_ulp_of_numpys():
    u = np.random.default_rng(0).random(100_000) + 2.0**-60
    ours, theirs = numerics.neg_log(u), -np.log(u)
    assert (np.abs(ours - theirs) <= 2 * np.spacing(np.abs(theirs))).all()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.8), (0.5, 40, 0.9)])
def test_sampling_probs_agree_with_the_torch_fallback(temperature, top_k, top_p):
    """Same kept tokens, same probabilities to float rounding (random logits: no ties at the cut-offs)."""
    logits = random_logits(4)
    B = logits.shape[0]
    args = ([temperature] * B, [top_k] * B, [top_p] * B)
    ours = numerics.sampling_probs(logits, *args)
    theirs = numerics._sampling_probs_by_torch(logits, *args)
    assert torch.equal(ours > 0, theirs > 0)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_top_p_ties_keep_the_lower_token_ids():
    probs = numerics.sampling_probs(torch.zeros(1, 8), [1.0], [0], [0.3])  # uniform: 3 tokens reach 0.3
    assert (probs[0] > 0).tolist() == [True] * 3 + [False] * 5
    torch.testing.assert_close(probs[0, :3], torch.full((3,), 1 / 3))


def test_bad_sampling_parameters_are_refused():
    for temperature, top_k, top_p in [(0.0, 0, 1.0), (1.0, -1, 1.0), (1.0, 0, 0.0), (1.0, 0, 1.5)]:
        with pytest.raises(RuntimeError):
            numerics.sampling_probs(torch.zeros(1, 4), [temperature], [top_k], [top_p])
    with pytest.raises(RuntimeError):
        numerics.sampling_probs(torch.zeros(2, 4), [1.0], [0], [1.0])  # one row's parameters for two rows


def test_the_fallback_is_torchs_and_changes_the_fingerprint(monkeypatch):
    native_part = numerics.fingerprint_part()
    assert native_part == f"numerics-native-v{numerics._native.ARITHMETIC_VERSION}"
    logits = random_logits(5)
    monkeypatch.setattr(numerics, "_native", None)
    assert not numerics.native()
    fallback = numerics.fingerprint_part()
    assert fallback != native_part and torch.__version__ in fallback
    assert torch.backends.cpu.get_cpu_capability() in fallback, "torch's bits depend on its CPU dispatch"
    assert torch.equal(numerics.log_softmax(logits), torch.log_softmax(logits, -1))
    assert torch.equal(numerics.softmax(logits), torch.softmax(logits, -1))
    u = np.random.default_rng(1).random(1000)
    assert (numerics.neg_log(u) == -np.log(u)).all()


@pytest.mark.parametrize("positions,head_dim,theta", [(512, 64, 10000.0), (64, 16, 10000.0), (4096, 128, 500000.0)])
def test_rope_tables_are_the_models_angles_rounded_once(positions, head_dim, theta):
    """The native step's RoPE tables: model.model.rope_tables' angles (float32 arithmetic), their cos and sin
    computed in double and rounded once: within an ulp of numpy's float64 cos and sin (torch's float32 ones are
    off by an ulp in some 5% of entries, and pick their code per CPU)."""
    cos, sin = numerics._native.rope_tables(positions, head_dim, theta)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.outer(torch.arange(positions).float(), inv_freq).double().numpy()  # (positions, head_dim / 2)
    for ours, reference in ((cos, np.cos(angles)), (sin, np.sin(angles))):
        assert torch.equal(ours[:, : head_dim // 2], ours[:, head_dim // 2 :]), "both halves of a row alike"
        exact = torch.from_numpy(reference.astype(np.float32))
        ulps = (ours[:, : head_dim // 2].view(torch.int32).long() - exact.view(torch.int32).long()).abs()
        assert ulps.max() <= 1 and (ulps == 0).float().mean() > 0.999
