"""OpenAI-compatible routes, as vLLM serves them: POST /v1/completions, GET /v1/models[/{id}].

The served model's id is the checkpoint folder's name. Errors on these routes use OpenAI's shape,
{"error": {"message", "type", "param", "code"}}; the rest of the server keeps its own envelope.

Tokens are bytes. In `logprobs`, a token's text is its byte alone: the character itself for ASCII (so
ASCII text is exactly the concatenation of its tokens), and the escape "\\xNN" for a byte >= 0x80, which is
not text by itself (the escape keeps every byte's key distinct in top_logprobs). text_offset[i] is the
offset, in characters of the returned text, of the character that byte i belongs to.

`echo: true, max_tokens: 0, logprobs: N` scores the prompt (one forward pass, on the engine's thread):
each prompt byte's log-probability given the bytes before it; the first byte has none (null).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable

import torch
import torch.nn.functional as F
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from model.api import TinyLLM
from model.generate import TextAssembler
from model.tokenizer import ByteTokenizer, IncrementalDecoder
from server.engine import Engine, FinishEvent, GenerationRequest, QueueFull, TokenEvent
from server.errors import APIError, check_finish, engine_of, error_response
from server.openai_schemas import Completion, CompletionRequest, ModelCard, ModelList, OpenAIErrorResponse

FINISH_REASONS = {"length": "length", "context_full": "length", "stop": "stop"}
ERRORS = {code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 413, 503, 504)}
tokenizer = ByteTokenizer()

Scored = tuple[int, float | None, list[tuple[int, float]] | None]  # (byte, logprob, top alternatives)


# ---------------------------------------------------------------- errors in OpenAI's shape

class OpenAIError(APIError):
    """An APIError with OpenAI's extra `code` field."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(status, message, type, param, headers)
        self.code = code


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return f"invalid JSON body: {err.get('msg')}", None
    if not loc:
        return "the request body must be a JSON object (Content-Type: application/json)", None
    param = loc[0]
    if param == "prompt" and len(loc) > 1 and err.get("type") != "value_error":
        return "prompt must be a string, a list of strings, a list of byte ids (0..255), or a list of such lists", param
    msg = {"extra_forbidden": "unknown field", "missing": "field required"}.get(err.get("type"), err.get("msg"))
    return f"{'.'.join(loc)}: {msg}", param


class OpenAIRoute(APIRoute):
    """Answers this router's validation and API errors in OpenAI's shape, before the app's handlers see them."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request):
            try:
                return await handler(request)
            except RequestValidationError as e:
                message, param = _validation_message(e)
                return error_response(400, message, "invalid_request_error", param, path=request.url.path)
            except APIError as e:
                return error_response(e.status, e.message, e.type, e.param, e.headers, path=request.url.path,
                                      code=getattr(e, "code", None))

        return route


router = APIRouter(route_class=OpenAIRoute, tags=["OpenAI-compatible"])


# ---------------------------------------------------------------- routes

@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request):
    return ModelList(data=[model_card(request)])


@router.get("/v1/models/{model}", response_model=ModelCard, responses=ERRORS)
async def retrieve_model(model: str, request: Request):
    check_model(model, request)
    return model_card(request)


@router.post("/v1/completions", response_model=Completion, responses={
    **ERRORS, 200: {"content": {"application/json": {}, "text/event-stream": {}},
                    "description": "a completion, or with stream: server-sent chunks ending `data: [DONE]`"}})
async def completions(body: CompletionRequest, request: Request):
    engine = engine_of(request)
    check_model(body.model, request)
    prompts = body.prompts()
    max_tokens = check_request(body, prompts, engine, request.app.state.settings)
    scores = None
    if body.echo and body.logprobs is not None:
        llm: TinyLLM = request.app.state.llm
        scores = await engine.run(lambda: [prompt_logprobs(llm, ids, body.logprobs) for _, ids in prompts])
    seqs = submit_all(engine, body, prompts, max_tokens, request.app.state.settings.request_timeout)
    choices = [ChoiceStream(i * body.n + j, body.stop_bytes(), body.logprobs, len(text) if body.echo else 0)
               for i, (text, _) in enumerate(prompts) for j in range(body.n)]
    if body.echo:
        for choice in choices:
            text, ids = prompts[choice.index // body.n]
            choice.echo_piece(text, scores[choice.index // body.n] if scores else [(b, None, None) for b in ids])
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model_id(request)}
    prompt_tokens = sum(len(ids) for _, ids in prompts)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return request.app.state.streams.response(
            sse_chunks(pieces(seqs, choices), head, choices, prompt_tokens, include_usage),
            lambda: [seq.cancel() for seq in seqs], request.url.path, media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    async with contextlib.aclosing(pieces(seqs, choices)) as all_pieces:
        async for _ in all_pieces:
            pass
    return {**head, "choices": [c.choice() for c in choices],
            "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices))}


# ---------------------------------------------------------------- checks

def model_id(request: Request) -> str:
    """The checkpoint folder's name, e.g. "shakespeare"."""
    return os.path.basename(os.path.abspath(request.app.state.settings.checkpoint)) or "tinyllm"


def model_card(request: Request) -> ModelCard:
    engine = engine_of(request)
    try:
        created = int(os.path.getmtime(request.app.state.settings.checkpoint))
    except OSError:
        created = 0
    name = model_id(request)
    return ModelCard(id=name, created=created, root=name, max_model_len=engine.config.context_length)


def check_model(name: str, request: Request) -> None:
    if name != model_id(request):
        raise OpenAIError(404, f"The model `{name}` does not exist. This server serves `{model_id(request)}`.",
                          "invalid_request_error", "model", "model_not_found")


def check_request(body: CompletionRequest, prompts: list[tuple[str, list[int]]], engine: Engine, settings) -> int:
    """Check the body against the model and the server's limits; return max_tokens."""
    if body.best_of is not None and body.best_of != body.n:
        raise OpenAIError(400, "best_of is not supported (leave it out, or equal to n)", param="best_of")
    if body.logit_bias:
        raise OpenAIError(400, "logit_bias is not supported", param="logit_bias")
    if body.suffix:
        raise OpenAIError(400, "suffix is not supported", param="suffix")
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(400, "stream_options is only allowed when stream is true", param="stream_options")
    ctx = engine.config.context_length
    longest = max(len(ids) for _, ids in prompts)
    if longest > ctx:
        raise OpenAIError(400, f"This model's maximum context length is {ctx} tokens (bytes); the prompt has "
                               f"{longest}.", param="prompt")
    max_tokens = settings.max_new_tokens if body.max_tokens is None else body.max_tokens
    if max_tokens > settings.max_new_tokens:
        raise OpenAIError(400, f"max_tokens must be <= {settings.max_new_tokens}", param="max_tokens")
    return max_tokens


# ---------------------------------------------------------------- engine work

def submit_all(engine: Engine, body: CompletionRequest, prompts, max_tokens: int, timeout: float) -> list:
    """One engine sequence per (prompt, choice), in choice-index order; all or none are queued.

    With max_tokens 0 there is nothing to generate and nothing is queued.
    """
    if max_tokens == 0:
        return []
    params, stops, top_n = body.sampling_params(), body.stop_bytes(), body.logprobs or 0
    seqs = []
    try:
        for _, ids in prompts:
            for j in range(body.n):
                seed = None if body.seed is None else (body.seed + j) % 2**64
                seqs.append(engine.submit(GenerationRequest(prompt=ids, max_new_tokens=max_tokens, params=params,
                                                            seed=seed, stop=stops, logprobs=top_n,
                                                            timeout=timeout)))
    except QueueFull as e:
        for seq in seqs:
            seq.cancel()
        raise OpenAIError(503, f"server busy: {e}; retry shortly", "overloaded", headers={"Retry-After": "1"}) from None
    return seqs


def prompt_logprobs(llm: TinyLLM, ids: list[int], top_n: int) -> list[Scored]:
    """Each prompt byte with its log-probability given the bytes before it (the first has none). Worker thread."""
    logits, _ = llm.model(torch.tensor([ids], device=llm.device))  # (1, T, vocab)
    logprobs = F.log_softmax(logits[0, :-1].float(), dim=-1).cpu()  # (T-1, vocab): row t predicts byte t+1
    chosen = logprobs.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).tolist()
    top_values, top_ids = torch.topk(logprobs, top_n, dim=-1) if top_n else (None, None)
    scored: list[Scored] = [(ids[0], None, None)]
    for t in range(1, len(ids)):
        top = list(zip(top_ids[t - 1].tolist(), top_values[t - 1].tolist())) if top_n else []
        scored.append((ids[t], chosen[t - 1], top))
    return scored


async def merged(seqs: list) -> AsyncIterator[tuple[int, TokenEvent | FinishEvent]]:
    """(sequence index, event) from all sequences as they come; closing it early cancels the unfinished ones."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, seq):
        async for event in seq.events():
            await queue.put((i, event))

    tasks = [asyncio.create_task(pump(i, seq)) for i, seq in enumerate(seqs)]
    try:
        finished = 0
        while finished < len(seqs):
            item = await queue.get()
            finished += isinstance(item[1], FinishEvent)
            yield item
    finally:
        for task in tasks:
            task.cancel()


async def pieces(seqs: list, choices: list[ChoiceStream]) -> AsyncIterator[dict]:
    """Every choice's pieces in order of arrival: the echoed prompts first. Raises OpenAIError on a timeout."""
    for choice in choices:
        for piece in choice.take():
            yield piece
    async with contextlib.aclosing(merged(seqs)) as events:
        async for index, event in events:
            choice = choices[index]
            if isinstance(event, TokenEvent):
                choice.token_piece(event)
            else:
                check_finish(event)
                choice.finish_piece(event.reason, event.completion_tokens)
            for piece in choice.take():
                yield piece
    if not seqs:  # max_tokens 0
        for choice in choices:
            choice.finish_piece("length", 0)
            for piece in choice.take():
                yield piece


# ---------------------------------------------------------------- responses

def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_text(byte: int) -> str:
    return chr(byte) if byte < 0x80 else tokenizer.label(byte)


def top_dict(byte: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, float]:
    """The top alternatives, most likely first, plus the chosen byte (as OpenAI: up to logprobs + 1 entries)."""
    out = {token_text(b): lp for b, lp in top}
    out.setdefault(token_text(byte), logprob)
    return out


class ChoiceStream:
    """One choice as pieces: text deltas, each carrying the logprobs of exactly the bytes that make it up.

    Bytes that may begin a stop string are held back (as the engine holds back their text), and a stop
    string's own bytes are dropped, so the tokens always spell the text. The non-streamed choice is the
    concatenation of the pieces, so streaming and not streaming give the same text and logprobs.
    """

    def __init__(self, index: int, stops: list[bytes], top_n: int | None, text_start: int):
        self.index, self.top_n = index, top_n
        self.assembler = TextAssembler(stops)
        self.pending: list[Scored] = []  # pushed, not yet given out
        self.given = 0  # bytes of the assembler's data given out
        self.chars = text_start  # characters of the returned text before the next byte given out
        self.decoder = IncrementalDecoder()
        self.pieces: list[dict] = []
        self.taken = 0  # pieces already taken by the stream
        self.completion_tokens = 0

    def echo_piece(self, text: str, scored: list[Scored]) -> None:
        chars, decoder, offsets = 0, IncrementalDecoder(), []
        for byte, _, _ in scored:
            offsets.append(chars)
            chars += len(decoder.push(byte))
        self._add(text, scored, offsets)

    def token_piece(self, event: TokenEvent) -> None:
        self.pending.append((event.id, event.logprob, event.top_logprobs))
        text, _ = self.assembler.push(event.id)
        self._give(text, self.assembler.released - self.given)

    def finish_piece(self, reason: str, completion_tokens: int) -> None:
        self.completion_tokens = completion_tokens
        text = self.assembler.finish()
        self._give(text, self.assembler.released - self.given, FINISH_REASONS[reason])
        self.pending.clear()  # what is left is a stop string

    def _give(self, text: str, n: int, finish: str | None = None) -> None:
        scored, self.pending = self.pending[:n], self.pending[n:]
        self.given += n
        offsets = []
        for byte, _, _ in scored:
            offsets.append(self.chars)
            self.chars += len(self.decoder.push(byte))
        if text or finish or (scored and self.top_n is not None):
            self._add(text, scored, offsets, finish)

    def _add(self, text: str, scored: list[Scored], offsets: list[int], finish: str | None = None) -> None:
        logprobs = None
        if self.top_n is not None:
            logprobs = {"tokens": [token_text(b) for b, _, _ in scored],
                        "token_logprobs": [lp for _, lp, _ in scored],
                        "top_logprobs": [None if top is None else top_dict(b, lp, top) for b, lp, top in scored],
                        "text_offset": offsets}
        self.pieces.append({"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": finish})

    def take(self) -> list[dict]:
        """Pieces added since the last take."""
        new, self.taken = self.pieces[self.taken:], len(self.pieces)
        return new

    def choice(self) -> dict:
        """The whole choice: all pieces joined."""
        logprobs = None
        if self.top_n is not None:
            logprobs = {k: [v for p in self.pieces for v in p["logprobs"][k]]
                        for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
        return {"index": self.index, "text": "".join(p["text"] for p in self.pieces), "logprobs": logprobs,
                "finish_reason": self.pieces[-1]["finish_reason"]}


async def sse_chunks(all_pieces: AsyncIterator[dict], head: dict, choices: list[ChoiceStream], prompt_tokens: int,
                     include_usage: bool) -> AsyncIterator[str]:
    """`data: {chunk}` per piece, an optional usage chunk, then `data: [DONE]`; an error mid-stream is one event."""
    def chunk(body: dict) -> str:
        return f"data: {json.dumps(body)}\n\n"

    extra = {"usage": None} if include_usage else {}  # as OpenAI: with include_usage, every chunk has the field
    async with contextlib.aclosing(all_pieces):
        try:
            async for piece in all_pieces:
                yield chunk({**head, "choices": [piece], **extra})
        except OpenAIError as e:
            yield chunk({"error": {"message": e.message, "type": e.type, "param": None, "code": None}})
            yield "data: [DONE]\n\n"
            return
    if include_usage:
        yield chunk({**head, "choices": [], "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices))})
    yield "data: [DONE]\n\n"
