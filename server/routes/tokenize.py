"""POST /v1/tokenize: a text's bytes, each with its display label and the character it belongs to."""

from __future__ import annotations

from fastapi import APIRouter

from model.tokenizer import tokenizer
from server.deps import ModelsDep
from server.errors import ERROR_RESPONSES
from server.schemas import TokenizeRequest, TokenizeResponse, text_bytes

router = APIRouter(tags=["text"])


@router.post("/v1/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, models: ModelsDep):
    models.get(body.model)  # every model reads bytes alike; an unknown name is still a 404
    ids = tokenizer.encode(body.text)
    return TokenizeResponse(tokens=text_bytes(body.text), count=len(ids), labels=tokenizer.char_labels(ids))
