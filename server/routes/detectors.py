"""POST /v1/detectors: every head's detector scores (model/detectors.py) on a text and on the repeated random probe,
the OV copying score, which heads are induction heads, and, when the model has an atlas, the scores over its corpus."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, Field

from model.detectors import INDUCTION_THRESHOLD, induction_heads
from server.across_jobs import Detect
from server.checks import text_ids
from server.deps import ModelsDep
from server.errors import ERROR_RESPONSES, APIError
from server.schemas import ChoosesModel, Text

router = APIRouter(tags=["inspect"])


class DetectRequest(ChoosesModel):
    text: Text | None = Field(None, min_length=2, description="a text to score the heads on (optional)")


Scores = dict[str, list[list[float | None]]]
UNDEFINED = "null where a score is undefined: no query has such keys (same_character on an ASCII text)"


class DetectResponse(BaseModel):
    model: str
    scores: Scores = Field(description=f"per score, per layer, per head; {UNDEFINED}")
    corpus: Scores | None = Field(description=f"the same text scores over the atlas's corpus; {UNDEFINED}")
    corpus_note: str | None = Field(description="why there are no corpus scores (no atlas: the command to make it)")
    induction_threshold: float
    induction_heads: list[tuple[int, int]] = Field(
        description="(layer, head) of every head whose induction_probe reaches the threshold"
    )


@router.post("/v1/detectors", response_model=DetectResponse, responses=ERROR_RESPONSES)
async def detect_heads(body: DetectRequest, models: ModelsDep):
    """Per head: previous byte, duplicate byte, induction (TransformerLens's scores) and same character, same word,
    start of text on the text; induction, duplicate and previous byte on a repeated random probe; OV copying."""
    served = models.get(body.model)
    ids = text_ids(body.text, served.engine.config) if body.text is not None else []
    scores = await served.engine.inspect(Detect(ids=ids, heads_off=[]))
    try:
        corpus = served.atlas().record.get("detectors")
        corpus_note = None
    except APIError as e:  # no atlas: the corpus scores come with it, and the message says how to make it
        corpus, corpus_note = None, e.message
    return {
        "model": served.name,
        "scores": {name: np.asarray(a).tolist() for name, a in scores.items()},
        "corpus": corpus,
        "corpus_note": corpus_note,
        "induction_threshold": INDUCTION_THRESHOLD,
        "induction_heads": induction_heads(scores),
    }
