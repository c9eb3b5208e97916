"""Sampling as pure functions of logits: the UTF-8 mask, penalties, temperature, top-k, top-p, seeded draws.

A draw for sequence i at its generation step t is a function of (seed_i, t) and its logits alone
(exponential_noise): the same seed and parameters give the same bytes alone, in any batch, on any thread. The
probabilities and the noise's logarithm come from model.numerics: the same bits on every CPU (with the native
extension). These functions define the arithmetic; with the extension, model/native/sampling.h computes the same,
bit for bit, for a whole batch in one call (model.choice; tests/test_native_sampling.py holds the two equal).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from model import numerics, utf8


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    presence_penalty: float = 0.0  # 0 = off; OpenAI's, over generated tokens
    frequency_penalty: float = 0.0  # 0 = off; OpenAI's, over generated tokens
    valid_utf8: bool = True  # only bytes that keep the text valid UTF-8 (model.utf8); False: any byte

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


def random_seed() -> int:
    """A seed for a request that gave none."""
    return int.from_bytes(os.urandom(8), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, element-wise on uint64 (wrapping arithmetic): a well-spread hash of x."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_UTF8_LOGITS = list(torch.zeros(utf8.MASKS.shape).masked_fill(~utf8.MASKS, float("-inf")))  # added to mask logits


def exponential_noise(seeds: list[int], steps: list[int], vocab: int) -> np.ndarray:
    """(B, vocab) float64 Exp(1) draws, row i a function of (seeds[i], steps[i]) alone: counter-based, like
    Philox, so a sequence's noise at a step is the same whatever else is in the batch, with no generator state
    to carry and no Python loop over rows."""
    seed = np.array([s % 2**64 for s in seeds], dtype=np.uint64)
    step = np.array(steps, dtype=np.uint64)
    key = _mix(seed + _mix(step + _GOLDEN))  # (B,)
    bits = _mix(key[:, None] + np.arange(1, vocab + 1, dtype=np.uint64)[None] * _GOLDEN)  # (B, vocab)
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
    return numerics.neg_log(uniform)


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


def _per_row(x, rows: int) -> list:
    """A per-row parameter as a list: from a number (every row), a list, or a tensor."""
    if isinstance(x, torch.Tensor):
        x = x.reshape(-1).tolist()
    return list(x) * (rows if len(x) == 1 else 1) if isinstance(x, list) else [x] * rows


def logits_to_probs(logits: torch.Tensor, temperature, top_k=0, top_p=1.0) -> torch.Tensor:
    """Probabilities after temperature, top-k and nucleus (top-p) filtering; temperature > 0.

    One row: logits (vocab,) with numbers for the rest. A batch: logits (B, vocab) with, for each of
    temperature, top_k (0 = off) and top_p (1 = off), a value per row (a list or a (B,) tensor) or one number
    for all rows (model.numerics.sampling_probs).
    """
    one_row = logits.dim() == 1
    logits = logits.float().reshape(-1, logits.shape[-1])  # (B, V)
    temperature, top_k, top_p = (_per_row(x, logits.shape[0]) for x in (temperature, top_k, top_p))
    probs = numerics.sampling_probs(logits, temperature, top_k, top_p)
    return probs[0] if one_row else probs


def penalize(logits: torch.Tensor, params: SamplingParams, previous: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """One row's logits (vocab,) after its repetition, presence and frequency penalties.

    previous: the ids seen so far, of which previous[n_prompt:] are generated (presence and frequency count only
    those).
    """
    logits = apply_repetition_penalty(logits, previous, params.repetition_penalty)
    return apply_presence_frequency_penalty(
        logits, previous[n_prompt:], params.presence_penalty, params.frequency_penalty
    )


def sampler_logits(
    logits: torch.Tensor,
    params: list[SamplingParams],
    previous: list[torch.Tensor | None],
    n_prompt: list[int],
    utf8_masks: list[int] | None = None,
) -> torch.Tensor:
    """The logits (B, vocab) the draws read (sample_rows): after the UTF-8 mask, then the penalties (in place where
    logits is float32 already)."""
    logits = logits.float()
    masked = [i for i, p in enumerate(params) if p.valid_utf8]
    utf8_masks = utf8_masks or [utf8.START] * len(params)
    if masked:  # one add: a row for one sequence, a stack of them for several
        rows = [_UTF8_LOGITS[utf8_masks[i]] for i in masked]
        if len(masked) == len(params):
            logits = logits + (rows[0] if len(rows) == 1 else torch.stack(rows))
        else:
            logits[masked] += torch.stack(rows)
    for i, p in enumerate(params):
        if p.uses_history:
            logits[i] = penalize(logits[i], p, previous[i], n_prompt[i])
    return logits


def sample_rows(
    logits: torch.Tensor,
    params: list[SamplingParams],
    previous: list[torch.Tensor | None],
    n_prompt: list[int],
    seeds: list[int],
    steps: list[int],
    utf8_masks: list[int] | None = None,
) -> list[int]:
    """The next token of every row of logits (B, vocab), each row with its own parameters, seed and step.

    First, rows with valid_utf8 lose the bytes that row utf8_masks[i] of model.utf8.MASKS does not allow (what
    keeps the text valid UTF-8 and finishable): before penalties and filters, greedy included (utf8_masks None:
    every row at the start of a character, with room).
    previous[i]: row i's ids so far (needed only when a penalty
    is on, else None). The filters run as one op over the batch. A draw is argmax(probs / q), q ~ Exp(1) from
    exponential_noise(seed, step): an exact sample from probs (the exponential race). Greedy rows (temperature
    0) take the argmax.
    """
    logits = sampler_logits(logits, params, previous, n_prompt, utf8_masks)
    greedy = logits.argmax(dim=-1)
    drawn = [i for i, p in enumerate(params) if p.temperature > 0]
    if not drawn:
        return greedy.tolist()
    chosen = [params[i] for i in drawn]
    probs = logits_to_probs(
        logits[drawn] if len(drawn) < len(params) else logits,
        [p.temperature for p in chosen],
        [p.top_k for p in chosen],
        [p.top_p for p in chosen],
    )
    noise = exponential_noise([seeds[i] for i in drawn], [steps[i] for i in drawn], logits.shape[-1])
    tokens = greedy.tolist()
    for i, token in zip(drawn, (probs.double().numpy() / noise).argmax(-1).tolist()):
        tokens[i] = token
    return tokens


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    previous: torch.Tensor,
    seed: int = 0,
    step: int = 0,
    n_prompt: int = 0,
    utf8_mask: int = utf8.START,
) -> int:
    """The next token id from one position's logits (vocab,), given the ids seen so far (see sample_rows)."""
    return sample_rows(logits.unsqueeze(0), [params], [previous], [n_prompt], [seed], [step], [utf8_mask])[0]
