"""POST /v1/generate: the native generation API, whole or streamed as server-sent events.

With heads_off or explain a request runs in the exact model, one request at a time beside the batch (server.engine),
so what other requests get does not change with it."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from model.config import ModelConfig
from model.tokenizer import tokenizer
from server import sse
from server.checks import check_ablation_while_generating, check_heads_off, check_indices
from server.config import Settings
from server.deps import MetricsDep, ModelsDep, SettingsDep, StreamsDep
from server.errors import ERROR_RESPONSES, APIError, check_finish, error_body, finish_error
from server.jobs import EngineRequest, FinishEvent, TokenEvent
from server.models import ServedModel
from server.responses import json_response
from server.schemas import GenerateRequest, GenerateResponse

router = APIRouter(tags=["generation"])
LABELS = tuple(tokenizer.label(b) for b in range(256))  # each byte's label, looked up for every token streamed


@router.post(
    "/v1/generate", response_model=GenerateResponse, response_model_exclude_none=True, responses=ERROR_RESPONSES
)
async def generate(
    body: GenerateRequest,
    request: Request,
    models: ModelsDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    streams: StreamsDep,
):
    served = models.get(body.model)
    req, truncated = engine_request(body, served.engine.config, settings)
    job = served.engine.submit(req)
    if body.stream:
        return streams.response(sse_events(metrics.timed(job), served.fingerprint), job.cancel, request.url.path)
    tokens = []
    async for batch in metrics.timed(job):
        for event in batch:
            if isinstance(event, TokenEvent):
                tokens.append(token_out(event))
                continue
            check_finish(event)
            return json_response(whole_response(served, event, tokens, truncated, req))


def whole_response(
    served: ServedModel, finish: FinishEvent, tokens: list[dict], truncated: int, req: EngineRequest
) -> dict:
    """A GenerateResponse as a dict, in its field order and without nulls (orjson writes it as FastAPI would)."""
    end = finish_out(finish)
    return {
        "model": served.name,
        "system_fingerprint": served.fingerprint,
        "text": end["text"],
        "tokens": tokens,
        "finish_reason": end["finish_reason"],
        "usage": end["usage"],
        "timing": end["timing"],
        "truncated_prompt_tokens": truncated,
        **attention_axes(req),
        **({"heads_off": req.heads_off} if req.heads_off else {}),
    }


def engine_request(body: GenerateRequest, cfg: ModelConfig, settings: Settings) -> tuple[EngineRequest, int]:
    """Check a generate body against the model and the server's limits; the engine's request, and how many
    prompt bytes truncation dropped."""
    ctx = cfg.context_length
    ids = tokenizer.encode(body.prompt)
    if len(ids) > settings.max_prompt_bytes:
        raise APIError(
            413,
            f"prompt is {len(ids)} bytes; this server accepts at most {settings.max_prompt_bytes}",
            "request_too_large",
            "prompt",
        )
    if body.max_new_tokens > settings.max_new_tokens:
        raise APIError(400, f"max_new_tokens must be <= {settings.max_new_tokens}", param="max_new_tokens")
    truncated = 0
    if len(ids) > ctx:
        if not body.truncate:
            raise APIError(
                400,
                f"prompt is {len(ids)} bytes but the context holds {ctx}; shorten it or set "
                '"truncate": true to keep its last bytes',
                param="prompt",
            )
        truncated = len(ids) - max(1, ctx - body.max_new_tokens)
        while truncated < len(ids) and is_continuation(ids[truncated]):  # characters are kept whole or not at all
            truncated += 1
        while truncated == len(ids) or is_continuation(ids[truncated]):  # only part of the last one fitted: keep it
            truncated -= 1
        ids = ids[truncated:]
    attention = None
    if body.attention is not None:
        attention = (
            check_indices(body.attention.layers, cfg.n_layer, "attention.layers"),
            check_indices(body.attention.heads, cfg.n_head, "attention.heads"),
        )
    check_ablation_while_generating(body.ablation)
    req = EngineRequest(
        prompt=ids,
        max_new_tokens=body.max_new_tokens,
        params=body.sampling_params(),
        seed=body.seed,
        stop=[s.encode("utf-8") for s in body.stop],
        top_logprobs=body.logprobs,
        attention=attention,
        heads_off=check_heads_off(body.heads_off, cfg),
        explain_top=body.explain.top if body.explain is not None else 0,
        timeout=settings.request_timeout,
        stream=body.stream,
    )
    return req, truncated


def is_continuation(byte: int) -> bool:
    return 0x80 <= byte < 0xC0


def attention_axes(req: EngineRequest) -> dict:
    if req.attention is None:
        return {}
    return {"attention_layers": req.attention[0], "attention_heads": req.attention[1]}


def token_out(event: TokenEvent) -> dict:
    """A GeneratedToken as a dict, built directly: this runs for every token on the event loop."""
    out = {
        "id": event.id,
        "text": LABELS[event.id],
        "logprob": event.logprob,
        "top_logprobs": [{"id": i, "text": LABELS[i], "logprob": lp} for i, lp in event.top_logprobs],
    }
    if event.attention is not None:
        out["attention"] = event.attention
    if event.explain is not None:
        logit, top = event.explain
        # as the response model sends them (without nulls): an MLP has no head, the embedding neither layer nor head
        pushes = [{k: v for k, v in dataclasses.asdict(c).items() if v is not None} for c in top]
        out["explain"] = {"logit": logit, "top": pushes}
    return out


def finish_out(event: FinishEvent) -> dict:
    total = (event.prefill_ms + event.decode_ms) / 1e3
    return {
        "text": event.text,
        "finish_reason": event.reason.value,
        "usage": {
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens,
        },
        "timing": {
            "queue_ms": round(event.queue_ms, 3),
            "prefill_ms": round(event.prefill_ms, 3),
            "decode_ms": round(event.decode_ms, 3),
            "tokens_per_second": round(event.completion_tokens / total, 2) if total > 0 else 0.0,
        },
    }


def newest_char_labels(generated: deque[int]) -> list[str]:
    """tokenizer.last_char_labels(generated), with ASCII (a character of its own, whatever came before) looked up."""
    newest = generated[-1]
    return [LABELS[newest]] if newest < 0x80 else tokenizer.last_char_labels(generated)


async def sse_events(batches: AsyncIterator[list[TokenEvent | FinishEvent]], fingerprint: str) -> AsyncIterator[bytes]:
    """One event per token, a last one with finish_reason/usage/text/system_fingerprint (or the error), then [DONE];
    the events of the tokens waiting when the stream wakes go out in one write.

    A token's event carries the labels of the character it belongs to, ending with its own byte's, so a
    client showing bytes as they arrive relabels just those (the page does).
    """
    generated = deque(maxlen=4)  # a UTF-8 character is at most 4 bytes
    async for batch in batches:
        out = []
        for event in batch:
            if isinstance(event, TokenEvent):
                generated.append(event.id)  # a prompt ends on a whole character, so these alone decide the labels
                labels = newest_char_labels(generated)
                payload = {"token": token_out(event), "text": event.text, "labels": labels}
            elif (error := finish_error(event)) is not None:
                payload = error_body(error.message, error.type)
            else:
                payload = {**finish_out(event), "system_fingerprint": fingerprint}
            out.append(sse.event(payload))
        if isinstance(batch[-1], FinishEvent):
            out.append(sse.DONE)
        yield b"".join(out)
