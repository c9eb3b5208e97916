"""What the model loses without some heads: each byte's loss with them and without (model.trace switches them off).

"Head 2.1 is a previous-byte head" becomes testable: switch it off and see which bytes get harder to predict.
Losses are in bits: -log2 p(byte | the bytes before it), for bytes 1..T-1 (the first has nothing before it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.trace import Trace


@dataclass
class AblationLoss:
    bits: torch.Tensor  # (T - 1,) per byte 1..T-1, with every head working
    bits_ablated: torch.Tensor  # (T - 1,) with heads_off switched off

    @property
    def bits_per_byte(self) -> float:
        return float(self.bits.mean())

    @property
    def bits_per_byte_ablated(self) -> float:
        return float(self.bits_ablated.mean())

    @property
    def change(self) -> float:
        """The change in bits per byte: positive when the model does worse without the heads."""
        return self.bits_per_byte_ablated - self.bits_per_byte


def byte_bits(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """-log2 p of bytes 1..T-1 from logits (T, vocab) whose row t predicts byte t + 1: (T - 1,) on the CPU."""
    following = torch.tensor(list(ids[1:]), device=logits.device)
    return (F.cross_entropy(logits[:-1].float(), following, reduction="none") / math.log(2)).cpu()


def ablation_loss(plain: Trace, ablated: Trace) -> AblationLoss:
    """The loss of a plain run of the model and of a run with heads switched off, on the same text (model.trace)."""
    ids = plain.ids
    if ablated.ids != ids:
        raise ValueError("the two runs are over different texts")
    if len(ids) < 2:
        raise ValueError(f"text has {len(ids)} byte; a loss needs at least 2 (the first byte has no prediction)")
    return AblationLoss(byte_bits(plain.logits, ids), byte_bits(ablated.logits, ids))
