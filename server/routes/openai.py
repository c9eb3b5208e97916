"""OpenAI-compatible routes, as vLLM serves them: POST /v1/completions, GET /v1/models[/{id}].

A served model's id is its checkpoint folder's name; GET /v1/models lists every one. Errors on these paths
carry OpenAI's extra "code" field (server.errors). `echo: true, max_tokens: 0, logprobs: N` scores the
prompt (one forward pass, on the engine's thread): each prompt byte's log-probability given the bytes before
it; the first byte has none. A prompt plus max_tokens longer than the context is a 400
(`context_length_exceeded`), as in vLLM: a completion is never silently cut short by the context, so a
harness can trust that it got what it asked for.

The extra fields heads_off and ablation score the prompt (and generate: zeros only) without those heads, in the exact
model (model/trace.py; generation as in /v1/generate).
"""

from __future__ import annotations

import contextlib
import time
import uuid

from fastapi import APIRouter, Request

from model import utf8
from server.checks import check_ablation_while_generating, check_heads_off
from server.config import Settings
from server.deps import ModelsDep, SettingsDep, StreamsDep
from server.engine import Engine
from server.errors import OPENAI_ERROR_RESPONSES, APIError
from server.jobs import EngineRequest, Job, QueueFull
from server.models import ServedModel
from server.openai_choices import ChoiceStream, pieces, sse_chunks, usage
from server.openai_schemas import Completion, CompletionRequest, ModelCard, ModelList
from server.responses import json_response

router = APIRouter(tags=["OpenAI-compatible"])


@router.get("/v1/models", response_model=ModelList, responses=OPENAI_ERROR_RESPONSES)
async def list_models(models: ModelsDep):
    return ModelList(data=[model_card(served) for served in models])


@router.get("/v1/models/{model}", response_model=ModelCard, responses=OPENAI_ERROR_RESPONSES)
async def retrieve_model(model: str, models: ModelsDep):
    return model_card(models.get(model))


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={
        **OPENAI_ERROR_RESPONSES,
        200: {
            "content": {"application/json": {}, "text/event-stream": {}},
            "description": "a completion, or with stream: server-sent chunks ending `data: [DONE]`",
        },
    },
)
async def completions(
    body: CompletionRequest, request: Request, models: ModelsDep, settings: SettingsDep, streams: StreamsDep
):
    served = models.get(body.model)
    engine = served.engine
    prompts = body.prompts()
    max_tokens = check_request(body, prompts, engine, settings)
    heads_off = check_heads_off(body.heads_off, engine.config)
    if max_tokens > 0:  # scoring alone (max_tokens 0) may switch heads off with their means
        check_ablation_while_generating(body.ablation)
    scores = None
    if body.echo and body.logprobs is not None:
        scores = await engine.score([ids for _, ids in prompts], body.logprobs, heads_off, body.ablation)
    jobs = submit_all(engine, body, prompts, max_tokens, heads_off, settings.request_timeout)
    choices = [
        ChoiceStream(i * body.n + j, body.stop_bytes(), body.logprobs, len(text) if body.echo else 0)
        for i, (text, _) in enumerate(prompts)
        for j in range(body.n)
    ]
    if body.echo:
        for choice in choices:
            text, ids = prompts[choice.index // body.n]
            choice.echo_piece(text, scores[choice.index // body.n] if scores else [(b, None, None) for b in ids])
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": served.name,
        "system_fingerprint": served.fingerprint,
    }
    prompt_tokens = sum(len(ids) for _, ids in prompts)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return streams.response(
            sse_chunks(pieces(jobs, choices), head, choices, prompt_tokens, include_usage),
            lambda: [job.cancel() for job in jobs],
            request.url.path,
        )
    async with contextlib.aclosing(pieces(jobs, choices)) as all_pieces:
        async for _ in all_pieces:
            pass
    return json_response(
        {
            **head,
            "choices": [c.choice() for c in choices],
            "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
        }
    )


def model_card(served: ServedModel) -> ModelCard:
    return ModelCard(
        id=served.name, created=served.created, root=served.name, max_model_len=served.engine.config.context_length
    )


def check_request(
    body: CompletionRequest, prompts: list[tuple[str, list[int]]], engine: Engine, settings: Settings
) -> int:
    """Check the body against the model and the server's limits; return max_tokens."""
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported (leave it out, or equal to n)", param="best_of")
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")
    if body.max_tokens is not None and body.max_tokens > settings.max_new_tokens:
        raise APIError(400, f"max_tokens must be <= {settings.max_new_tokens}", param="max_tokens")
    longest = max(len(ids) for _, ids in prompts)
    max_tokens = fit_context(longest, body.max_tokens, engine.config.context_length, settings.max_new_tokens)
    # Only generation needs valid text before it: scoring takes any bytes.
    if max_tokens and body.utf8 == "valid" and any(utf8.state_after_window(ids) is None for _, ids in prompts):
        raise APIError(
            400,
            'prompt is not valid UTF-8, so no valid text continues it; send "utf8": "any" to continue its bytes',
            param="prompt",
        )
    return max_tokens


def fit_context(prompt_tokens: int, max_tokens: int | None, ctx: int, cap: int) -> int:
    """max_tokens for a prompt of prompt_tokens, as vLLM decides it: what does not fit the context is a 400
    naming the numbers, never a completion cut short; null asks for as many as fit (at most the cap)."""
    if prompt_tokens > ctx or (max_tokens is None and prompt_tokens == ctx):
        leaves_none = ", which leaves none for the completion" if prompt_tokens == ctx else ""
        raise APIError(
            400,
            f"This model's maximum context length is {ctx} tokens. However, you requested {prompt_tokens} tokens "
            f"in the messages{leaves_none}. Please reduce the length of the messages.",
            param="prompt",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        return min(cap, ctx - prompt_tokens)
    if prompt_tokens + max_tokens > ctx:
        raise APIError(
            400,
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            "completion). Please reduce the length of the messages or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens


def submit_all(
    engine: Engine,
    body: CompletionRequest,
    prompts: list[tuple[str, list[int]]],
    max_tokens: int,
    heads_off: list[tuple[int, int]],
    timeout: float,
) -> list[Job]:
    """One engine job per (prompt, choice), in choice-index order; all or none are queued.

    With max_tokens 0 there is nothing to generate and nothing is queued.
    """
    if max_tokens == 0:
        return []
    params, stops, top_n = body.sampling_params(), body.stop_bytes(), body.logprobs or 0
    jobs = []
    try:
        for _, ids in prompts:
            for j in range(body.n):
                seed = None if body.seed is None else body.seed + j
                jobs.append(
                    engine.submit(
                        EngineRequest(
                            prompt=ids,
                            max_new_tokens=max_tokens,
                            params=params,
                            seed=seed,
                            stop=stops,
                            top_logprobs=top_n,
                            heads_off=heads_off,
                            timeout=timeout,
                            stream=body.stream,
                        )
                    )
                )
    except QueueFull:
        for job in jobs:
            job.cancel()
        raise
    return jobs
