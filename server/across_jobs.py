"""Inspection jobs that read the model across texts rather than through one text's trace: activation patching between
two texts, head detectors, the same byte in different contexts. Like server/inspection.py's jobs they are values the
engine runs on its worker thread (`await engine.inspect(job)`), through the Python API (model/api.py TinyLLM)."""

from __future__ import annotations

from dataclasses import dataclass

from model.api import TinyLLM
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
