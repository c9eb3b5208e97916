"""The decode step: what generation runs the model in, behind one interface.

Two steps implement it:
- `NativeStep` (model/native/step.py): float32 or int8 weights on a CPU, in C++, batch-invariant: a sequence's keys,
  values, logits and so its bytes are the same whatever else is in the batch, however many threads run;
- `TorchStep` (model/torch_step.py): any weight form on any device (CUDA; a CPU without the native step), prefill in
  the exact model and decode in a copy in the chosen form. Its matrix kernels change with the batch's shape, so its
  bytes can too.

`choose` picks one, in this one place: the native step where it can serve the model in the form, else the torch step
with the reason. The runner (model.runner) and the quality record (model.form_quality) both ask it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from model.choice import Batch, Choices
from model.kv_cache import KVCache
from model.model import Transformer
from model.native import step as native
from model.torch_step import TorchStep


class DecodeStep(Protocol):
    name: str  # the kernel path that generates, for people: "native (avx2 kernels)", "torch (cpu, float32 model)"
    batch_invariant: bool  # a sequence's bytes do not depend on the rest of its batch
    arithmetic: str  # what decides the bits, for the system_fingerprint: "native-v3", "torch-2.13.0-cpu-torch.float32"
    kernels: str | None  # the native step's kernel path (vnni, avx2, scalar); None for the torch step
    weight_bytes: int  # what one token's step reads of the weights: its matrices (in the form), scales and norms

    def prefill(
        self, tokens: list[int], row: int, start: int, cache: KVCache, last: bool, attention: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A chunk of one sequence, positions start.., into cache row `row`. When `last`: the logits (1, vocab) of
        its last position and, with `attention`, that position's probabilities (1, n_layer, n_head, keys)."""

    def decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, attention_for: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One token for each of n sequences, sequence i in cache row i at positions[i]: logits (n, vocab) and the
        probabilities (len(attention_for), n_layer, n_head, keys) of the sequences attention_for names."""

    def decode_and_choose(
        self, tokens: list[int], positions: list[int], cache: KVCache, attention_for: list[int], batch: Batch
    ) -> tuple[Choices, torch.Tensor | None]:
        """decode(), then each sequence's next token chosen from its logits (model.choice; the native step makes
        both in one call): the choices and the probabilities decode() gives."""

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) of whole windows ids (B, T) from position 0, in this step's form and arithmetic."""


def choose(model: Transformer, form: str, kernels: str = "auto", native_step: bool = True):
    """The step that generates for `model` in weight form `form`, and why it is not the native step (None when it
    is). kernels: the native step's (auto, or one of model.native.step.KERNELS)."""
    why = native.why_not(model, form) if native_step else "the torch step was asked for"
    if why is None:
        return native.NativeStep(model, form, kernels), None
    return TorchStep(model, form), why
