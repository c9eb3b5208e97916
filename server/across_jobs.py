"""Inspection jobs that read the model across texts rather than through one text's trace: activation patching between
two texts, head detectors, the same byte in different contexts. Like server/inspection.py's jobs they are values the
engine runs on its worker thread (`await engine.inspect(job)`), through the Python API (model/api.py TinyLLM)."""

from __future__ import annotations

from dataclasses import dataclass

from model.api import TinyLLM
from model.contexts import Contexts
from model.patching import Patching
from server.inspection import Inspection


@dataclass(frozen=True, kw_only=True)
class Patch(Inspection[Patching]):
    """ids: the clean text's bytes; corrupt: the corrupt text's, of the same length."""

    corrupt: list[int]
    target: int | None
    foil: int | None

    def run(self, llm: TinyLLM) -> Patching:
        return llm.patch(bytes(self.ids), bytes(self.corrupt), self.target, self.foil)


@dataclass(frozen=True, kw_only=True)
class Detect(Inspection[dict]):
    """ids: a text to score the heads on (empty: the probe and the copying score only)."""

    def run(self, llm: TinyLLM) -> dict:
        return llm.detect([bytes(self.ids)] if self.ids else [])


@dataclass(frozen=True, kw_only=True)
class CompareContexts(Inspection[Contexts]):
    """ids: the text; other: a second text or None; positions per text (None: every occurrence of byte)."""

    other: list[int] | None
    positions: list[int] | None
    other_positions: list[int] | None
    byte: int | None

    def run(self, llm: TinyLLM) -> Contexts:
        other = bytes(self.other) if self.other is not None else None
        return llm.contexts(bytes(self.ids), self.positions, self.byte, other, self.other_positions)
