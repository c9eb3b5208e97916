"""The HTTP layer: an app factory whose lifespan loads the model once; thin routes over the engine."""
from __future__ import annotations

import io
import json
import logging
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from model.api import TinyLLM
from model.tokenizer import ByteTokenizer
from server import openai_api
from server.auth import install_auth
from server.config import Settings
from server.engine import Engine, FinishEvent, GenerationRequest, QueueFull, TokenEvent
from server.errors import APIError, ErrorResponse, check_finish, engine_of, install_handlers
from server.limits import BodySizeLimit, StreamLimit
from server.metrics import CountRequests, Metrics
from server.schemas import (AttentionRequest, AttentionResponse, GenerateRequest, GenerateResponse, Token,
                            TokenInfo, TokenizeRequest, TokenizeResponse, TopLogprob)

log = logging.getLogger("tinyllm.server")
STATIC = Path(__file__).parent / "static"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503, 504)}
tokenizer = ByteTokenizer()


def create_app(settings: Settings, llm: TinyLLM | None = None) -> FastAPI:
    """The ASGI app. `llm` is loaded from settings.checkpoint when not given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.threads:
            torch.set_num_threads(settings.threads)
        model = llm or TinyLLM.load(settings.checkpoint, settings.device, settings.dtype)
        engine = Engine(model, settings.max_batch, settings.max_queue, settings.prefill_chunk)
        engine.start()
        app.state.llm, app.state.engine = model, engine
        log.info("serving %s on %s (%s), %d parameters", settings.checkpoint, model.device,
                 model.model.lm_head.weight.dtype, model.model.num_params())
        yield
        engine.stop()

    app = FastAPI(title="TinyLLM", version="0.1.0", lifespan=lifespan,
                  description="A byte-level transformer: generate text and look at its attention.")
    app.state.settings = settings
    app.state.streams = streams = StreamLimit(settings.max_streams)
    metrics = Metrics(lambda: getattr(app.state, "engine", None))
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CountRequests, metrics=metrics)
    install_handlers(app)
    install_auth(app, settings)
    if settings.cors_origins:  # off unless configured; outermost, so preflights are answered before auth
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.include_router(openai_api.router)

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health(request: Request):
        engine_of(request)
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/model")
    async def model_info(request: Request):
        engine = engine_of(request)
        llm_ = request.app.state.llm
        return {"checkpoint": str(settings.checkpoint), "config": llm_.config.to_dict(),
                "num_params": llm_.model.num_params(), "device": str(llm_.device),
                "dtype": str(llm_.model.lm_head.weight.dtype).removeprefix("torch."),
                "context_length": llm_.config.context_length, "max_batch": engine.max_batch,
                "training": llm_.training}

    @app.post("/v1/tokenize", response_model=TokenizeResponse, responses=ERRORS)
    async def tokenize(body: TokenizeRequest):
        ids = tokenizer.encode(body.text)
        return TokenizeResponse(tokens=token_infos(body.text), count=len(ids), labels=tokenizer.char_labels(ids))

    @app.post("/v1/generate", response_model=GenerateResponse, response_model_exclude_none=True, responses=ERRORS)
    async def generate(body: GenerateRequest, request: Request):
        engine = engine_of(request)
        req, truncated = generation_request(body, engine, settings)
        try:
            seq = engine.submit(req)
        except QueueFull as e:
            raise APIError(503, f"server busy: {e}; retry shortly", "overloaded", headers={"Retry-After": "1"})
        if body.stream:
            return streams.response(sse_events(metrics.timed(seq)), seq.cancel, request.url.path,
                                    media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        tokens = []
        async for event in metrics.timed(seq):
            if isinstance(event, TokenEvent):
                tokens.append(token_out(event))
            else:
                check_finish(event)
                return {**finish_out(event), "tokens": tokens, "truncated_prompt_tokens": truncated,
                        **attention_axes(req)}

    @app.post("/v1/attention", response_model=AttentionResponse, responses={
        **ERRORS, 200: {"content": {"application/json": {}, "application/octet-stream": {}, "image/png": {}},
                        "description": "JSON, a .npy array (layers, heads, T, T), or a PNG heatmap"}})
    async def attention(body: AttentionRequest, request: Request):
        engine = engine_of(request)
        cfg = engine.config
        ids = tokenizer.encode(body.text)
        if len(ids) > cfg.context_length:
            raise APIError(400, f"text is {len(ids)} bytes; the context holds {cfg.context_length}", param="text")
        layers = check_indices(body.layers, cfg.n_layer, "layers")
        heads = check_indices(body.heads, cfg.n_head, "heads")
        if body.format == "png" and (len(layers) != 1 or (len(heads) != 1 and body.aggregate != "mean")):
            raise APIError(400, "png shows one map: choose one layer and one head, or one layer with "
                                "aggregate: \"mean\"", param="layers" if len(layers) != 1 else "heads")
        n_heads_out = 1 if body.aggregate == "mean" else len(heads)
        cells = len(layers) * n_heads_out * len(ids) ** 2
        if body.format == "json" and cells > settings.attention_max_cells:
            raise APIError(400, f"{cells:,} attention cells exceed the JSON cap of {settings.attention_max_cells:,}; "
                                "ask for fewer layers or heads, use aggregate: \"mean\", or format: \"npy\"",
                           param="layers")
        maps = await engine.run(lambda: request.app.state.llm.attention(bytes(ids)))  # (L, H, T, T) float32
        if layers != list(range(cfg.n_layer)):  # indexing copies the whole array: only when a subset is asked for
            maps = maps[layers]
        if heads != list(range(cfg.n_head)):
            maps = maps[:, heads]
        if body.aggregate == "mean":
            maps = maps.mean(dim=1, keepdim=True)
        headers = {"X-Tokens": json.dumps(ids),
                   "X-Layers": ",".join(map(str, layers)), "X-Heads": ",".join(map(str, heads))}
        if body.format == "npy":
            npy = await run_in_threadpool(npy_bytes, maps, body.dtype)
            return Response(npy, media_type="application/octet-stream", headers=headers)
        if body.format == "png":
            from server.heatmap import render_png  # matplotlib loads only when a PNG is asked for
            title = f"layer {layers[0]}, " + (f"head {heads[0]}" if body.aggregate == "none" else "mean of heads")
            png = await run_in_threadpool(render_png, maps[0, 0].numpy(), tokenizer.char_labels(ids), title)
            return Response(png, media_type="image/png", headers=headers)
        answer = {"tokens": [t.model_dump() for t in token_infos(body.text)], "layers": layers, "heads": heads,
                  "aggregate": body.aggregate}
        # Millions of floats take seconds to encode: off the event loop, so streams keep flowing meanwhile.
        content = await run_in_threadpool(lambda: json.dumps({**answer, "attention": maps.tolist()},
                                                             separators=(",", ":"), ensure_ascii=False).encode())
        return Response(content, media_type="application/json")

    if (STATIC / "index.html").exists():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def page():
            return FileResponse(STATIC / "index.html")

    return app


# ---------------------------------------------------------------- helpers shared by the routes

def token_infos(text: str) -> list[TokenInfo]:
    ids = tokenizer.encode(text)
    spans = tokenizer.byte_char_spans(text)
    return [TokenInfo(id=i, text=tokenizer.label(i), start=s, end=e) for i, (s, e) in zip(ids, spans)]


def npy_bytes(maps: torch.Tensor, dtype: str) -> bytes:
    """The array as a .npy file, the same bytes np.save writes; torch casts to float16 (vectorised, unlike numpy)."""
    arr = maps.to(getattr(torch, dtype)).contiguous().numpy()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(arr))
    return b"".join((header.getvalue(), arr.data))  # one copy of the data, not np.save's two


def check_indices(chosen: list[int] | None, n: int, param: str) -> list[int]:
    if chosen is None:
        return list(range(n))
    if not chosen:
        raise APIError(400, f"{param} is empty; leave it null for all", param=param)
    bad = [i for i in chosen if i >= n]
    if bad:
        raise APIError(400, f"{param} {bad} out of range: valid indices are 0..{n - 1}", param=param)
    return chosen


def generation_request(body: GenerateRequest, engine: Engine, settings: Settings) -> tuple[GenerationRequest, int]:
    """Validate a generate body against the model and the server's limits; return the engine request."""
    ctx = engine.config.context_length
    ids = tokenizer.encode(body.prompt)
    if len(ids) > settings.max_prompt_bytes:
        raise APIError(413, f"prompt is {len(ids)} bytes; this server accepts at most {settings.max_prompt_bytes}",
                       "request_too_large", "prompt")
    if body.max_new_tokens > settings.max_new_tokens:
        raise APIError(400, f"max_new_tokens must be <= {settings.max_new_tokens}", param="max_new_tokens")
    truncated = 0
    if len(ids) > ctx:
        if not body.truncate:
            raise APIError(400, f"prompt is {len(ids)} bytes but the context holds {ctx}; shorten it or set "
                                "\"truncate\": true to keep its last bytes", param="prompt")
        keep = max(1, ctx - body.max_new_tokens)
        truncated, ids = len(ids) - keep, ids[-keep:]
    attention = None
    if body.attention is not None:
        cfg = engine.config
        attention = (check_indices(body.attention.layers, cfg.n_layer, "attention.layers"),
                     check_indices(body.attention.heads, cfg.n_head, "attention.heads"))
    req = GenerationRequest(prompt=ids, max_new_tokens=body.max_new_tokens, params=body.sampling_params(),
                            seed=body.seed, stop=[s.encode("utf-8") for s in body.stop], logprobs=body.logprobs,
                            attention=attention, timeout=settings.request_timeout)
    return req, truncated


def attention_axes(req: GenerationRequest) -> dict:
    if req.attention is None:
        return {}
    return {"attention_layers": req.attention[0], "attention_heads": req.attention[1]}


def token_out(event: TokenEvent) -> dict:
    out = Token(id=event.id, text=tokenizer.label(event.id), logprob=event.logprob,
                top_logprobs=[TopLogprob(id=i, text=tokenizer.label(i), logprob=lp) for i, lp in event.top_logprobs],
                attention=event.attention)
    return out.model_dump(exclude_none=True)


def finish_out(event: FinishEvent) -> dict:
    total = (event.prefill_ms + event.decode_ms) / 1e3
    return {"text": event.text, "finish_reason": event.reason,
            "usage": {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
                      "total_tokens": event.prompt_tokens + event.completion_tokens},
            "timing": {"queue_ms": round(event.queue_ms, 3), "prefill_ms": round(event.prefill_ms, 3),
                       "decode_ms": round(event.decode_ms, 3),
                       "tokens_per_second": round(event.completion_tokens / total, 2) if total > 0 else 0.0}}


async def sse_events(events):
    """Server-sent events: one per token, a last one with finish_reason/usage/text, then [DONE]."""
    generated = deque(maxlen=4)  # enough to label the character the newest byte belongs to
    async for event in events:
        if isinstance(event, TokenEvent):
            generated.append(event.id)  # the prompt ends on a whole character, so these alone decide the labels
            payload = {"token": token_out(event), "text": event.text,
                       "labels": tokenizer.last_char_labels(generated)}
        elif event.reason in ("timeout", "error"):
            kind = "timeout" if event.reason == "timeout" else "server_error"
            payload = {"error": {"message": event.message, "type": kind, "param": None}}
        else:
            payload = finish_out(event)
        yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"
