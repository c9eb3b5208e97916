"""Sampling as pure functions of logits, with an explicit torch.Generator for reproducibility."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    presence_penalty: float = 0.0  # 0 = off; OpenAI's, over generated tokens
    frequency_penalty: float = 0.0  # 0 = off; OpenAI's, over generated tokens

    def __post_init__(self):
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("presence_penalty", math.isfinite(self.presence_penalty), "finite"),
            ("frequency_penalty", math.isfinite(self.frequency_penalty), "finite"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")

    @property
    def uses_history(self) -> bool:
        """Whether sampling depends on the tokens seen so far (a penalty is on)."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def seeded_generator(seed: int | None) -> torch.Generator:
    """A generator of its own for one sequence: seeded with `seed` (taken mod 2**64), or at random when None.

    One generator per sequence is what makes a seed give the same bytes alone or in any batch.
    """
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    return torch.Generator().manual_seed(seed % 2**64)


def apply_repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as in Hugging Face): seen tokens' positive logits are divided, negative multiplied."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    logits = logits.clone()
    seen = logits.gather(-1, previous)
    logits.scatter_(-1, previous, torch.where(seen > 0, seen / penalty, seen * penalty))
    return logits


def apply_presence_frequency_penalty(
    logits: torch.Tensor, generated: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties: logits -= presence * (count > 0) + frequency * count, counting each id in `generated`."""
    if (presence == 0.0 and frequency == 0.0) or generated.numel() == 0:
        return logits
    counts = torch.bincount(generated, minlength=logits.shape[-1]).to(logits.dtype)  # (vocab,)
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


def logits_to_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities (vocab,) after temperature, top-k and nucleus (top-p) filtering. temperature > 0."""
    logits = logits.float()
    # Shift the maximum to 0 before dividing: a tiny temperature then gives -inf (probability 0), never the
    # inf - inf = nan of softmax over overflowed logits. The clamp: a penalty near 0 can overflow a logit to inf.
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)
    logits = (logits - logits.max()) / max(temperature, torch.finfo(logits.dtype).tiny)  # 1e-300 is 0 in float32
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        drop[..., 0] = False  # a top_p below float32's smallest (5e-324) would otherwise drop every token
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    previous: torch.Tensor,
    generator: torch.Generator | None,
    n_prompt: int = 0,
) -> int:
    """The next token id from one position's logits (vocab,), given the ids seen so far.

    previous[n_prompt:] are the generated ones: presence and frequency penalties count only those.
    """
    logits = apply_repetition_penalty(logits, previous, params.repetition_penalty)
    logits = apply_presence_frequency_penalty(
        logits, previous[n_prompt:], params.presence_penalty, params.frequency_penalty
    )
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = logits_to_probs(logits, params.temperature, params.top_k, params.top_p)
    return int(torch.multinomial(probs, 1, generator=generator))
