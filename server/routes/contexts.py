"""POST /v1/contexts: one byte in different contexts (model/contexts.py): the cosine of its residual stream between
its occurrences in a text (or in two texts), after the embedding and after every layer."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from model.contexts import OccurrenceError, occurrences
from server.across_jobs import CompareContexts
from server.checks import one_byte, text_ids
from server.deps import ModelsDep
from server.errors import ERROR_RESPONSES, APIError
from server.schemas import ChoosesModel, Text, text_bytes

router = APIRouter(tags=["inspect"])


class ContextsRequest(ChoosesModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "the cat sat on the mat", "byte": "t"}]})

    text: Text = Field(min_length=1)
    positions: list[int] | None = Field(None, description="byte positions in text (default: every one of `byte`)")
    byte: int | str | None = Field(
        None, description="the byte (0..255 or a one-byte character); default: the byte at the first position given"
    )
    other_text: Text | None = Field(None, min_length=1, description="a second text with the same byte")
    other_positions: list[int] | None = Field(None, description="positions in other_text (default: every one)")


@router.post("/v1/contexts", responses=ERROR_RESPONSES)
async def same_byte_in_contexts(body: ContextsRequest, models: ModelsDep):
    """The cosine similarity of one byte's residual stream between its occurrences, per layer."""
    served = models.get(body.model)
    cfg = served.engine.config
    ids = text_ids(body.text, cfg)
    other = text_ids(body.other_text, cfg, "other_text") if body.other_text is not None else None
    if body.other_positions is not None and other is None:
        raise APIError(400, "other_positions needs other_text", param="other_positions")
    for name in ("positions", "other_positions"):
        if any(p < 0 for p in getattr(body, name) or ()):
            raise APIError(400, f"{name} must be byte positions (0 or more)", param=name)
    byte = one_byte(body.byte, "byte")
    texts = [ids] + ([other] if other is not None else [])
    try:
        byte, found = occurrences(texts, [body.positions] + ([body.other_positions] if other else []), byte)
    except OccurrenceError as e:
        raise APIError(400, str(e), param=e.param) from None
    out = await served.engine.inspect(
        CompareContexts(
            ids=ids,
            heads_off=[],
            other=other,
            positions=[p for t, p in found if t == 0],
            other_positions=[p for t, p in found if t == 1] if other else None,
            byte=byte,
        )
    )
    return {
        "model": served.name,
        "tokens": text_bytes(body.text),
        "other_tokens": text_bytes(body.other_text) if body.other_text is not None else None,
        "byte": out.byte,
        "occurrences": [{"text": t, "position": p} for t, p in out.occurrences],
        "stages": out.stages,
        "cosine": out.cosine.tolist(),
        "norms": out.norms.tolist(),
    }
