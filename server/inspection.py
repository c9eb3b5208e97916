"""Inspection jobs: what the looking-inside routes ask of the exact model, as values the engine runs
(`await engine.inspect(job)`, server/engine.py).

A job names a text's bytes, the heads to switch off and how (model/trace.py), and what to read; `run(llm)` reads it
through the Python API's looking-inside methods (model/api.py TinyLLM: explain, logit_lens, attribute, ablate, which
keep the last runs, so another head or byte of the same text costs no forward pass) or, for attention maps with heads
switched off, model.trace.attention_maps. A job reads the exact model and never the KV cache, so running one between
decode steps changes nothing that another request gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from model.ablation import AblationLoss
from model.api import TinyLLM
from model.attribution import Attribution
from model.explain import Walkthrough
from model.lens import Lens
from model.trace import Ablation, Head, attention_maps

Result = TypeVar("Result")


@dataclass(frozen=True, kw_only=True)
class Inspection(Generic[Result]):
    """One look inside the model over a text: its bytes, with heads_off switched off by `ablation`."""

    ids: list[int]
    heads_off: list[Head]
    ablation: Ablation = "zero"

    def run(self, llm: TinyLLM) -> Result:
        """Called on the engine's worker thread (Engine.inspect), never on the event loop."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class AttentionMaps(Inspection[torch.Tensor]):
    """Every layer's and head's attention probabilities (n_layer, n_head, T, T), float32 on the CPU."""

    def run(self, llm: TinyLLM) -> torch.Tensor:
        return attention_maps(llm.model, self.ids, self.heads_off, self.ablation)


@dataclass(frozen=True, kw_only=True)
class ExplainHead(Inspection[Walkthrough]):
    """One head's softmax(q·kᵀ/√d_k)·V for the byte at index `query`, step by step."""

    layer: int
    head: int
    query: int

    def run(self, llm: TinyLLM) -> Walkthrough:
        return llm.explain(bytes(self.ids), self.layer, self.head, self.query, self.heads_off, self.ablation)


@dataclass(frozen=True, kw_only=True)
class LogitLens(Inspection[Lens]):
    """The next-byte distribution read from the residual stream after every layer, its top_k bytes."""

    top_k: int

    def run(self, llm: TinyLLM) -> Lens:
        return llm.logit_lens(bytes(self.ids), self.top_k, self.heads_off, self.ablation)


@dataclass(frozen=True, kw_only=True)
class Attribute(Inspection[Attribution]):
    """Each head's, MLP's and the embedding's push on the logit of `target` (None: the next byte) at `position`."""

    position: int
    target: int | None

    def run(self, llm: TinyLLM) -> Attribution:
        return llm.attribute(bytes(self.ids), self.position, self.target, self.heads_off, self.ablation)


@dataclass(frozen=True, kw_only=True)
class Ablate(Inspection[AblationLoss]):
    """Each byte's loss with every head, and with heads_off switched off."""

    def run(self, llm: TinyLLM) -> AblationLoss:
        return llm.ablate(bytes(self.ids), self.heads_off, self.ablation)
