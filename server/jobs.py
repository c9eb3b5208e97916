"""A request inside the engine: what it asks (EngineRequest), what it receives (TokenEvent, then one FinishEvent),
and its Job: its sequence, its cache row, and the mailbox its events go to.

A job's events arrive in batches: everything the engine delivered since the reader last looked. A reader that keeps
up gets one token per batch; one that falls behind (a slow client, a busy event loop) gets all its waiting tokens
at once, so the work per wake-up, not per token, is what a slow reader pays for again."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from model.attribution import Contribution
from model.generate import FinishReason, TextAssembler
from model.sampling import SamplingParams, random_seed
from model.sequence import Sequence


class QueueFull(Exception):
    """The engine's waiting queue is full."""


@dataclass
class EngineRequest:
    """What the engine needs to run one generation (already validated against the model)."""

    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams = SamplingParams()
    seed: int | None = None
    stop: list[bytes] = field(default_factory=list)
    top_logprobs: int = 0
    attention: tuple[list[int], list[int]] | None = None  # (layers, heads)
    heads_off: list[tuple[int, int]] = field(default_factory=list)  # (layer, head): zeroed, in the exact model
    explain_top: int = 0  # each token's largest pushes on its logit to report (0 = none); in the exact model
    timeout: float | None = None
    stream: bool = True  # False: the tokens are delivered together with the finish (the event loop is not woken
    # for each one, which leaves it and the GIL to the engine while a whole response is generated)


@dataclass
class TokenEvent:
    id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]
    text: str  # newly completed text (whole characters; held back while it may begin a stop string)
    attention: list[list[list[float]]] | None  # [layer][head][key]
    explain: tuple[float, list[Contribution]] | None = None  # its logit, and the largest pushes on it
    at: float = 0.0  # time.perf_counter() when the engine produced it


@dataclass
class FinishEvent:
    reason: FinishReason
    text: str  # the whole generated text
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    prefill_ms: float
    decode_ms: float
    message: str = ""


class Job:
    """One request inside the engine: its sequence, its cache row, and the queue its events go to."""

    def __init__(
        self, req: EngineRequest, loop: asyncio.AbstractEventLoop, outbox: list, wake: threading.Event, context: int
    ):
        """outbox: where the engine collects a step's events to deliver; wake: set to wake the engine's worker;
        context: the model's context length."""
        self.req = req
        self.loop = loop
        self.inbox: list[TokenEvent | FinishEvent] = []  # delivered, not yet read (touched on the event loop only)
        self.arrived = asyncio.Event()  # set when the inbox gains events
        self.outbox, self.wake = outbox, wake
        self.seq = Sequence(
            list(req.prompt),
            len(req.prompt),
            req.params,
            random_seed() if req.seed is None else req.seed,
            req.top_logprobs,
            req.attention,
            list(req.heads_off),
            req.explain_top > 0,
            max_length=min(len(req.prompt) + req.max_new_tokens, context),
        )
        self.prefilled = 0
        self.slot = -1
        self.assembler = TextAssembler(req.stop)
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self.t_start = self.t_first = None
        self.deadline = self.t_submit + req.timeout if req.timeout else None
        self.held: list[TokenEvent] = []  # a job that does not stream: its tokens, until it finishes

    @property
    def generated(self) -> int:
        return len(self.seq.tokens) - self.seq.n_prompt

    async def batches(self) -> AsyncIterator[list[TokenEvent | FinishEvent]]:
        """The events in the order they were produced, in lists of those waiting when the reader wakes; the last
        list ends with the one FinishEvent. Leaving early (a client disconnect) cancels the job."""
        try:
            while True:
                if not self.inbox:
                    self.arrived.clear()
                    await self.arrived.wait()
                batch, self.inbox = self.inbox, []
                yield batch
                if isinstance(batch[-1], FinishEvent):
                    return
        finally:
            self.cancel()

    async def events(self) -> AsyncIterator[TokenEvent | FinishEvent]:
        """TokenEvents, then one FinishEvent, one at a time."""
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    def deliver(self, events: list[TokenEvent | FinishEvent]) -> None:
        """On the event loop: add events to the inbox and wake the reader."""
        self.inbox += events
        self.arrived.set()

    def cancel(self) -> None:
        """Stop generating; the worker frees the cache row at its next step (no-op once finished)."""
        self.cancelled = True
        self.wake.set()

    def emit(self, event) -> None:
        """Send an event (from the worker thread); the engine delivers a step's events together, and a job that
        does not stream gets its tokens with its FinishEvent."""
        if not self.req.stream and isinstance(event, TokenEvent):
            self.held.append(event)
            return
        if self.held:
            self.outbox.extend((self, e) for e in self.held)
            self.held.clear()
        self.outbox.append((self, event))

    def finish(self, reason: FinishReason, message: str = "") -> None:
        now = time.perf_counter()
        start = self.t_start or now
        first = self.t_first or now
        self.assembler.finish()  # no-op when the last token already flushed it
        self.emit(
            FinishEvent(
                reason,
                "".join(self.assembler.text),
                self.seq.n_prompt,
                self.generated,
                queue_ms=(start - self.t_submit) * 1e3,
                prefill_ms=(first - start) * 1e3,
                decode_ms=(now - first) * 1e3,
                message=message,
            )
        )
