"""Log-probabilities, the sampler's probabilities and the sampler's noise: the same bits on every CPU.

Torch picks its CPU kernels per machine (ATEN_CPU_CAPABILITY: default, avx2, avx512), and its log_softmax,
softmax and sums round differently on each (other vector widths, other orders of addition, SLEEF or libm);
numpy picks its log per machine too. The native extension's versions (model/native/numerics.h) compute in one
fixed order from + - * / and comparisons, exp and log as fixed polynomials: the same bits on every x86-64 CPU.
Without the extension, torch and numpy compute them, and fingerprint_part() names the torch, its dispatch and
the numpy, so the system_fingerprint tells the two apart.
"""

from __future__ import annotations

import numpy as np
import torch

from model.native import step as native_step

# not built, not loadable here, or stale (built from other sources): torch's kernels instead
_native = native_step._step if native_step.UNAVAILABLE is None else None


def native() -> bool:
    """Whether the fixed-order functions compute (else torch's and numpy's)."""
    return _native is not None


def fingerprint_part() -> str:
    """What decides these numbers' bits, for the system_fingerprint: the native arithmetic version, or torch's
    version and CPU dispatch and numpy's version."""
    if _native is not None:
        return f"numerics-native-v{_native.ARITHMETIC_VERSION}"
    capability = torch.backends.cpu.get_cpu_capability()
    return f"numerics-torch-{torch.__version__}-{capability}-numpy-{np.__version__}"


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dimension: float32, on the CPU."""
    logits = logits.float().cpu().contiguous()
    return torch.log_softmax(logits, dim=-1) if _native is None else _native.log_softmax(logits)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """softmax over the last dimension: float32, on the CPU."""
    logits = logits.float().cpu().contiguous()
    return torch.softmax(logits, dim=-1) if _native is None else _native.softmax(logits)


def neg_log(uniform: np.ndarray) -> np.ndarray:
    """-log(u), element-wise, of float64 u (the sampler's Exp(1) noise from its uniform draws)."""
    if _native is None:
        return -np.log(uniform)
    return -_native.log(torch.from_numpy(np.ascontiguousarray(uniform, dtype=np.float64))).numpy()


def sampling_probs(logits: torch.Tensor, temperature: list[float], top_k: list[int], top_p: list[float]):
    """The sampler's probabilities (B, vocab), float32, from logits (B, vocab), with each row's temperature (> 0),
    top_k (0: off) and top_p (1: off): temperature (the maximum shifted to 0 first), top-k, softmax, top-p (the
    smallest prefix of the tokens by probability whose mass reaches top_p, renormalized). The native version
    breaks ties in probability by token id (lower first)."""
    logits = logits.float().cpu().contiguous()
    if _native is None:
        return _sampling_probs_by_torch(logits, temperature, top_k, top_p)
    return _native.sampling_probs(logits, [float(t) for t in temperature], [int(k) for k in top_k], list(top_p))


def _sampling_probs_by_torch(logits: torch.Tensor, temperature: list, top_k: list, top_p: list) -> torch.Tensor:
    """sampling_probs in torch's kernels (its bits depend on torch's CPU dispatch)."""
    V = logits.shape[-1]
    tiny = torch.finfo(torch.float32).tiny  # a temperature of 1e-300 is 0 in float32: divide by the smallest instead
    # Shift the maximum to 0 before dividing: a tiny temperature then gives -inf (probability 0), never the
    # inf - inf = nan of softmax over overflowed logits. The clamp: a penalty near 0 can overflow a logit to inf.
    logits = logits.clamp(max=torch.finfo(torch.float32).max)
    logits = (logits - logits.amax(-1, keepdim=True)) / torch.tensor(temperature).float().clamp(min=tiny).unsqueeze(-1)
    if any(0 < k < V for k in top_k):
        k = torch.tensor([k if 0 < k < V else V for k in top_k])
        kth = logits.sort(dim=-1, descending=True).values.gather(-1, (k - 1).unsqueeze(-1))  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if any(p < 1.0 for p in top_p):
        nucleus = torch.tensor([p < 1.0 for p in top_p])
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= torch.tensor(top_p).float().unsqueeze(-1)
        drop &= nucleus.unsqueeze(-1)  # rows without top-p keep everything, whatever the rounding of the sums
        drop[:, 0] = False  # a top_p below float32's smallest (5e-324) would otherwise drop every token
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs
