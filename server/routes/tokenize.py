"""POST /v1/tokenize: a text's bytes, each with its display label and the character it belongs to."""

from __future__ import annotations

from fastapi import APIRouter

from model.tokenizer import tokenizer
from server.deps import ModelsDep
from server.errors import ERROR_RESPONSES
from server.schemas import TextByte, TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["text"])


@router.post("/v1/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, models: ModelsDep):
    models.get(body.model)  # every model reads bytes alike; an unknown name is still a 404
    ids = tokenizer.encode(body.text)
    return TokenizeResponse(tokens=text_bytes(body.text), count=len(ids), labels=tokenizer.char_labels(ids))


def text_bytes(text: str) -> list[TextByte]:
    """Every UTF-8 byte of text: its id, label, and the [start, end) characters of its character."""
    ids = tokenizer.encode(text)
    spans = tokenizer.byte_char_spans(text)
    return [TextByte(id=i, text=tokenizer.label(i), start=s, end=e) for i, (s, e) in zip(ids, spans)]
