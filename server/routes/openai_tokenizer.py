"""vLLM's tokenizer routes, which evaluation tools use: POST /tokenize, POST /detokenize, GET /tokenizer_info.

lm-evaluation-harness (`--model local-completions`) asks GET /tokenizer_info and POST /tokenize whether the
server tokenizes for it; when it does, it counts tokens and cuts its scoring windows through them instead
of downloading a tokenizer. Tokens are bytes, so these routes are exact and cheap.

A byte model has neither BOS nor EOS. /tokenizer_info reports no eos_token (a harness would otherwise add it
as a stop string to every generation) and "\\n" as bos_token (model.tokenizer.PREFIX_TOKEN): the token a
harness puts before a text so that its first byte is scored too. It is never added by /tokenize.
Errors carry OpenAI's `code` field, as on the OpenAI routes (server.errors).
"""

from __future__ import annotations

from fastapi import APIRouter

from model.tokenizer import PREFIX_TOKEN, VOCAB_SIZE, tokenizer
from server.deps import ModelsDep, QueryModelDep
from server.errors import OPENAI_ERROR_RESPONSES
from server.openai_choices import token_text
from server.openai_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizePromptRequest,
    TokenizePromptResponse,
    TokenizerInfo,
)

router = APIRouter(tags=["OpenAI-compatible"])


@router.post("/tokenize", response_model=TokenizePromptResponse, responses=OPENAI_ERROR_RESPONSES)
async def tokenize(body: TokenizePromptRequest, models: ModelsDep):
    served = models.get(body.model)
    ids = tokenizer.encode(body.prompt)
    return TokenizePromptResponse(
        count=len(ids),
        max_model_len=served.engine.config.context_length,
        tokens=ids,
        token_strs=[token_text(b) for b in ids] if body.return_token_strs else None,
    )


@router.post("/detokenize", response_model=DetokenizeResponse, responses=OPENAI_ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, models: ModelsDep):
    models.get(body.model)
    return DetokenizeResponse(prompt=tokenizer.decode(body.tokens))


@router.get("/tokenizer_info", response_model=TokenizerInfo, responses=OPENAI_ERROR_RESPONSES)
async def tokenizer_info(served: QueryModelDep):
    return TokenizerInfo(
        tokenizer_class=type(tokenizer).__name__,
        vocab_size=VOCAB_SIZE,
        model_max_length=served.engine.config.context_length,
        bos_token=PREFIX_TOKEN,
        eos_token=None,
        pad_token=None,
        unk_token=None,
        add_bos_token=False,
        add_eos_token=False,
    )
