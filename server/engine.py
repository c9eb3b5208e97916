"""The serving engine: continuous batching over a fixed-shape KV cache, on one worker thread.

One thread owns the model. Each loop it (1) runs queued model calls (attention maps), (2) prefills at most
one chunk of one waiting prompt into a staging cache row, and (3) decodes one token for every active
sequence in one batched forward pass. Active sequences always occupy cache rows 0..n-1 (a finished one's
row is refilled by moving the last one down), so the batch reads contiguous views of the cache.

Requests talk to the thread through asyncio queues; the engine imports nothing from the HTTP layer.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import torch
import torch.nn.functional as F

from model.api import TinyLLM
from model.generate import TextAssembler
from model.sampling import SamplingParams, sample

log = logging.getLogger("tinyllm.engine")


class QueueFull(Exception):
    """The engine's waiting queue is full."""


@dataclass
class GenerationRequest:
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams = SamplingParams()
    seed: int | None = None
    stop: list[bytes] = field(default_factory=list)
    logprobs: int = 0
    attention: tuple[list[int], list[int]] | None = None  # (layers, heads)
    timeout: float | None = None


@dataclass
class TokenEvent:
    id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]
    text: str  # newly completed text (whole characters; held back while it may begin a stop string)
    attention: list[list[list[float]]] | None  # [layer][head][key]


@dataclass
class FinishEvent:
    reason: str  # length | stop | context_full | timeout | error
    text: str  # the whole generated text
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    prefill_ms: float
    decode_ms: float
    message: str = ""


class Sequence:
    """One request inside the engine: its tokens, sampler state, and the queue its events go to."""

    def __init__(self, req: GenerationRequest, loop: asyncio.AbstractEventLoop, wake: threading.Event):
        self.req = req
        self.loop, self.queue, self.wake = loop, asyncio.Queue(), wake
        self.generator = torch.Generator()
        self.generator.manual_seed(req.seed if req.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        self.tokens = list(req.prompt)  # prompt + generated
        self.generated = 0
        self.prefilled = 0
        self.slot = -1
        self.assembler = TextAssembler(req.stop)
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self.t_start = self.t_first = None
        self.deadline = self.t_submit + req.timeout if req.timeout else None

    async def events(self) -> AsyncIterator[TokenEvent | FinishEvent]:
        """TokenEvents, then one FinishEvent. Leaving early (a client disconnect) cancels the sequence."""
        try:
            while True:
                event = await self.queue.get()
                yield event
                if isinstance(event, FinishEvent):
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop generating; the worker frees the cache row at its next step (no-op once finished)."""
        self.cancelled = True
        self.wake.set()

    def emit(self, event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def finish(self, reason: str, message: str = "") -> None:
        now = time.perf_counter()
        start = self.t_start or now
        first = self.t_first or now
        self.assembler.finish()  # no-op when the last token already flushed it
        self.emit(FinishEvent(reason, "".join(self.assembler.text), len(self.req.prompt), self.generated,
                              queue_ms=(start - self.t_submit) * 1e3, prefill_ms=(first - start) * 1e3,
                              decode_ms=(now - first) * 1e3, message=message))


class Engine:
    def __init__(self, llm: TinyLLM, max_batch: int = 32, max_queue: int = 256, prefill_chunk: int = 128):
        self.model = llm.model
        self.config = llm.config
        self.device = llm.device
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.staging_row = max_batch  # one extra cache row where prompts are prefilled before joining
        self.model.setup_caches(batch=max_batch + 1)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.calls: collections.deque[tuple[Callable, concurrent.futures.Future]] = collections.deque()
        self.prefilling: Sequence | None = None
        self.active: list[Sequence] = []  # active[i] sits in cache row i
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.ready = threading.Event()
        self.running = True
        self.tokens_generated = 0
        self.thread = threading.Thread(target=self._loop, name="tinyllm-engine", daemon=True)

    # ------------------------------------------------------------ the asyncio side

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.running = False
        self.wake.set()
        self.thread.join(timeout=10)

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    @property
    def active_count(self) -> int:
        return len(self.active) + (self.prefilling is not None)

    def submit(self, req: GenerationRequest) -> "Sequence":
        """Queue a request; iterate the returned sequence's events(). Raises QueueFull when the queue is full."""
        seq = Sequence(req, asyncio.get_running_loop(), self.wake)
        with self.lock:
            free_slots = self.max_batch - len(self.active) - (self.prefilling is not None)
            if len(self.waiting) >= self.max_queue + max(0, free_slots):
                raise QueueFull(f"all {self.max_batch} slots are busy and {len(self.waiting)} requests are waiting")
            self.waiting.append(seq)
        self.wake.set()
        return seq

    async def run(self, fn: Callable):
        """Run fn() on the worker thread between steps (model work never runs on the event loop)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self.calls.append((fn, fut))
        self.wake.set()
        return await asyncio.wrap_future(fut)

    # ------------------------------------------------------------ the worker thread

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        with torch.inference_mode():
            self._warmup()
            self.ready.set()
            while self.running:
                self.wake.clear()
                worked = self._run_calls()
                self._drop_cancelled()
                if self.prefilling is None and self.waiting and len(self.active) < self.max_batch:
                    with self.lock:
                        self.prefilling = self.waiting.popleft()
                if self.prefilling is not None:
                    self._guard(self._prefill_step, [self.prefilling])
                    worked = True
                if self.active:
                    self._guard(self._decode_step, list(self.active))
                    worked = True
                if not worked:
                    self.wake.wait(timeout=0.5)

    def _warmup(self) -> None:
        ids = torch.zeros(1, 8, dtype=torch.long, device=self.device)
        self.model(ids)

    def _run_calls(self) -> bool:
        worked = False
        while self.calls:
            with self.lock:
                fn, fut = self.calls.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as e:  # the caller gets the exception
                    fut.set_exception(e)
            worked = True
        return worked

    def _guard(self, step: Callable, seqs: list[Sequence]) -> None:
        """Run a step; if it fails, fail the sequences it touched and keep serving the others."""
        try:
            step()
        except Exception:
            log.exception("engine step failed")
            for seq in seqs:
                self._release(seq)
                seq.finish("error", "internal error while generating")

    def _drop_cancelled(self) -> None:
        now = time.perf_counter()
        for seq in [s for s in self.active + [self.prefilling] + list(self.waiting) if s is not None]:
            if seq.cancelled:
                self._release(seq)
            elif seq.deadline is not None and now > seq.deadline:
                self._release(seq)
                seq.finish("timeout", "request timed out")

    def _release(self, seq: Sequence) -> None:
        """Take seq out of the engine and free its cache row."""
        if seq is self.prefilling:
            self.prefilling = None
        elif seq in self.active:
            i = seq.slot
            last = len(self.active) - 1
            if i != last:  # move the last sequence's cache row down into the freed one
                moved = self.active[last]
                n = len(moved.tokens)
                for cache in self.model.caches:
                    cache.k[i, :, :n] = cache.k[last, :, :n]
                    cache.v[i, :, :n] = cache.v[last, :, :n]
                moved.slot = i
                self.active[i] = moved
            self.active.pop()
        else:
            with self.lock:
                if seq in self.waiting:
                    self.waiting.remove(seq)

    def _prefill_step(self) -> None:
        seq = self.prefilling
        if seq.t_start is None:
            seq.t_start = time.perf_counter()
        start = seq.prefilled
        chunk = seq.req.prompt[start:start + self.prefill_chunk]
        ids = torch.tensor([chunk], device=self.device)
        pos = torch.arange(start, start + len(chunk), device=self.device).unsqueeze(0)
        want_attn = seq.req.attention is not None
        logits, attn = self.model(ids, pos, use_cache=True, need_weights=want_attn, cache_row=self.staging_row,
                                  n_keys=start + len(chunk))
        seq.prefilled += len(chunk)
        if seq.prefilled < len(seq.req.prompt):
            return
        self.prefilling = None
        n = len(seq.req.prompt)
        if seq.req.max_new_tokens == 0 or n >= self.config.context_length:
            seq.t_first = time.perf_counter()
            seq.finish("length" if seq.req.max_new_tokens == 0 else "context_full")
            return
        slot = len(self.active)
        for cache in self.model.caches:
            cache.k[slot, :, :n] = cache.k[self.staging_row, :, :n]
            cache.v[slot, :, :n] = cache.v[self.staging_row, :, :n]
        seq.slot = slot
        self.active.append(seq)
        rows = [[a[0, :, -1, :n] for a in attn]] if want_attn else None
        self._emit_tokens([seq], logits[:, -1], rows)

    def _decode_step(self) -> None:
        seqs = self.active
        ids = torch.tensor([[s.tokens[-1]] for s in seqs], device=self.device)
        pos = torch.tensor([[len(s.tokens) - 1] for s in seqs], device=self.device)
        want_attn = any(s.req.attention is not None for s in seqs)
        logits, attn = self.model(ids, pos, use_cache=True, need_weights=want_attn,
                                  n_keys=max(len(s.tokens) for s in seqs))
        rows = None
        if want_attn:  # per sequence, per layer: (n_head, keys so far)
            rows = [[a[i, :, 0, :len(s.tokens)] for a in attn] for i, s in enumerate(seqs)]
        self._emit_tokens(list(seqs), logits[:, -1], rows)

    def _emit_tokens(self, seqs: list[Sequence], logits: torch.Tensor, attn_rows) -> None:
        """Sample one token for each sequence from its logits row (B, vocab); emit it; finish those that end.

        attn_rows, when any sequence asked for attention: per sequence, per layer, (n_head, keys).
        """
        logits = logits.float().cpu()  # the one host-device synchronisation per step
        logprobs = F.log_softmax(logits, dim=-1)
        now = time.perf_counter()
        done = []
        for i, seq in enumerate(seqs):
            req = seq.req
            previous = torch.tensor(seq.tokens) if req.params.uses_history else torch.empty(0, dtype=torch.long)
            try:
                token = sample(logits[i], req.params, previous, seq.generator, n_prompt=len(req.prompt))
            except Exception:  # one request's sampling must not fail the others in the batch
                log.exception("sampling failed")
                done.append((seq, "error"))
                continue
            if seq.t_first is None:
                seq.t_first = now
            seq.tokens.append(token)
            seq.generated += 1
            self.tokens_generated += 1
            top = []
            if req.logprobs:
                values, indices = torch.topk(logprobs[i], req.logprobs)
                top = list(zip(indices.tolist(), values.tolist()))
            rows = None
            if req.attention is not None:
                layers, heads = req.attention
                rows = [attn_rows[i][layer][heads].float().tolist() for layer in layers]
            delta, stopped = seq.assembler.push(token)
            reason = ("stop" if stopped else "length" if seq.generated >= req.max_new_tokens
                      else "context_full" if len(seq.tokens) >= self.config.context_length else None)
            if reason in ("length", "context_full"):
                delta += seq.assembler.finish()  # a cut-off character goes out with the last token
            seq.emit(TokenEvent(token, float(logprobs[i, token]), top, delta, rows))
            if reason:
                done.append((seq, reason))
        for seq, reason in sorted(done, key=lambda d: -d[0].slot):  # release from the top so rows stay valid
            self._release(seq)
            seq.finish(reason, "internal error while sampling" if reason == "error" else "")
