"""The serving engine: continuous batching on one worker thread. It schedules; the runner computes.

Each loop the worker (1) runs queued whole-text jobs (attention maps, prompt scoring, inspection), (2) drops
cancelled and timed-out jobs, (3) prefills up to one chunk of prompt bytes (the rest of one prompt, then the next
waiting ones) through the runner's prefill row, (4) decodes one token for every active job in one batched step,
and (5) advances each exact job (heads switched off, tokens explained) by one prompt chunk or one token in the
exact model. Active jobs always sit in cache rows 0..n-1 (a finished one's row is refilled by moving the last one
down), so a step reads rows in a block. Exact jobs never join that batch: each has a cache row of its own (the
runner's exact rows) and a mailbox of its own, so what the other jobs get does not change with them.

Requests reach the worker through asyncio: `submit` (generation), and the whole-text jobs `attention`, `score` and
`inspect` (server/inspection.py), awaited while the worker runs them between two steps. The engine imports nothing
from the HTTP layer and touches no tensor: the runner computes, and inspection jobs read the runner's model through
TinyLLM's looking-inside methods (model/api.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from model.api import TinyLLM
from model.generate import FinishReason, finish_reason
from model.runner import Runner, Scored
from model.sequence import TokenOutput
from model.trace import Ablation, Head
from server.inspection import Inspection, Result
from server.jobs import EngineRequest, FinishEvent, Job, QueueFull, TokenEvent

log = logging.getLogger("tinyllm.engine")


class Engine:
    """llm: TinyLLM over the runner's model, which inspection jobs read (None: this engine runs no inspection)."""

    def __init__(self, runner: Runner, max_queue: int = 256, prefill_chunk: int = 128, llm: TinyLLM | None = None):
        if llm is not None and llm.model is not runner.model:
            raise ValueError("inspection must read the model the runner serves: llm.model is not runner.model")
        self.runner = runner
        self.llm = llm
        self.config = runner.config
        self.max_batch = runner.max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.waiting: collections.deque[Job] = collections.deque()
        self.outbox: list[tuple[Job, TokenEvent | FinishEvent]] = []  # events of this step, not yet delivered
        self.calls: collections.deque[tuple[Callable, concurrent.futures.Future]] = collections.deque()
        self.prefilling: Job | None = None
        self.active: list[Job] = []  # active[i] sits in cache row i
        self.exact_waiting: collections.deque[Job] = collections.deque()
        self.exact: list[Job] = []  # each in its own cache row, job.slot
        self.free_exact_rows = [runner.exact_row(i) for i in range(runner.exact_rows)]
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
        return len(self.waiting) + len(self.exact_waiting)

    @property
    def active_count(self) -> int:
        return len(self.active) + (self.prefilling is not None) + len(self.exact)

    def submit(self, req: EngineRequest) -> Job:
        """Queue a request; iterate the returned job's events(). Raises QueueFull when the queue is full."""
        job = Job(req, asyncio.get_running_loop(), self.outbox, self.wake, self.config.context_length)
        with self.lock:
            if job.seq.exact:
                waiting, slots, free_slots = self.exact_waiting, self.runner.exact_rows, len(self.free_exact_rows)
            else:
                waiting, slots = self.waiting, self.max_batch
                free_slots = self.max_batch - len(self.active) - (self.prefilling is not None)
            if len(waiting) >= self.max_queue + max(0, free_slots):
                raise QueueFull(f"all {slots} slots are busy and {len(waiting)} requests are waiting")
            waiting.append(job)
        self.wake.set()
        return job

    async def attention(self, ids: list[int]):
        """Attention maps of ids, (n_layer, n_head, T, T), computed between decode steps."""
        return await self._call(self.runner.attention, ids)

    async def score(
        self, prompts: list[list[int]], top_n: int, heads_off: list[Head] = (), ablation: Ablation = "zero"
    ) -> list[list[Scored]]:
        """Each prompt's bytes with their log-probabilities given the bytes before them (without heads_off)."""
        return await self._call(lambda: [self.runner.score(ids, top_n, heads_off, ablation) for ids in prompts])

    async def inspect(self, job: Inspection[Result]) -> Result:
        """job.run(llm), run as attention maps and scoring are: it reads the exact model, never the KV cache, so what
        other requests get does not change with it. Its exception is raised here."""
        if self.llm is None:
            raise RuntimeError("this engine was made without a TinyLLM (Engine(..., llm=)) and runs no inspection")
        return await self._call(job.run, self.llm)

    async def _call(self, fn: Callable, *args):
        """Run fn(*args) on the worker thread between two steps, alone, with every core (Runner.every_core): model
        work never runs on the event loop, and no decode step runs beside it."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self.calls.append((lambda: fn(*args), fut))
        self.wake.set()
        return await asyncio.wrap_future(fut)

    # ------------------------------------------------------------ the worker thread

    def _loop(self) -> None:
        self.runner.warmup()
        self.ready.set()
        while self.running:
            self.wake.clear()
            worked = self._run_calls()
            self._drop_cancelled()
            self._admit()
            self._admit_exact()
            worked |= self._prefill()
            if self.active:
                self._guard(self._decode_step, list(self.active))
                worked = True
            for job in list(self.exact):
                self._guard(lambda job=job: self._exact_step(job), [job])
                worked = True
            self._deliver()
            if not worked:
                self.wake.wait(timeout=0.5)

    def _deliver(self) -> None:
        """Hand this step's events to their event loops: one wake-up per loop per step, not one per event."""
        by_loop: dict[asyncio.AbstractEventLoop, dict[Job, list]] = {}
        for job, event in self.outbox:
            by_loop.setdefault(job.loop, {}).setdefault(job, []).append(event)
        self.outbox.clear()  # in place: the jobs hold this list
        for loop, by_job in by_loop.items():
            loop.call_soon_threadsafe(_deliver_all, by_job)

    def _run_calls(self) -> bool:
        worked = False
        while self.calls:
            with self.lock:
                fn, fut = self.calls.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    with self.runner.every_core():
                        fut.set_result(fn())
                except Exception as e:  # the caller gets the exception
                    fut.set_exception(e)
            worked = True
        return worked

    def _guard(self, step: Callable, jobs: list[Job]) -> None:
        """Run a step; if it fails, fail the jobs it touched and keep serving the others."""
        try:
            step()
        except Exception:
            log.exception("engine step failed")
            for job in jobs:
                self._release(job)
                job.finish(FinishReason.ERROR, "internal error while generating")

    def _drop_cancelled(self) -> None:
        now = time.perf_counter()
        jobs = [*self.active, self.prefilling, *self.waiting, *self.exact, *self.exact_waiting]
        for job in [j for j in jobs if j is not None]:
            if job.cancelled:
                self._release(job)
            elif job.deadline is not None and now > job.deadline:
                self._release(job)
                job.finish(FinishReason.TIMEOUT, "request timed out")

    def _admit(self) -> None:
        """Take the next waiting job into prefill, when a slot is free; finish at once those with nothing to do."""
        while self.prefilling is None and self.waiting and len(self.active) < self.max_batch:
            with self.lock:
                job = self.waiting.popleft()
            if self._starts(job):
                self.prefilling = job

    def _admit_exact(self) -> None:
        """Give waiting exact jobs a free exact row each."""
        while self.exact_waiting and self.free_exact_rows:
            with self.lock:
                job = self.exact_waiting.popleft()
            if self._starts(job):
                job.slot = self.free_exact_rows.pop()
                self.exact.append(job)

    def _starts(self, job: Job) -> bool:
        """Whether a job taken from a queue has anything to do; if not, it is finished at once."""
        job.t_start = time.perf_counter()
        reason = finish_reason(0, job.req.max_new_tokens, len(job.req.prompt), self.config.context_length)
        if reason is not None:
            job.finish(reason)
        return reason is None

    def _release(self, job: Job) -> None:
        """Take a job out of the engine and free its cache row."""
        if job is self.prefilling:
            self.prefilling = None
        elif job in self.active:
            i, last = job.slot, len(self.active) - 1
            if i != last:  # move the last job's cache row down into the freed one
                moved = self.active[last]
                self.runner.move(last, i, len(moved.seq.tokens))
                moved.slot = i
                self.active[i] = moved
            self.active.pop()
        elif job in self.exact:
            self.exact.remove(job)
            self.free_exact_rows.append(job.slot)
        else:
            with self.lock:
                for waiting in (self.waiting, self.exact_waiting):
                    if job in waiting:
                        waiting.remove(job)

    def _prefill(self) -> bool:
        """Prefill up to prefill_chunk prompt bytes in this loop: the prompt in progress, then the next waiting
        ones, so that short prompts arriving together (64 clients at once) start within a few steps, not one per
        step, while a step still waits behind at most one chunk's worth of prompt. Whether it did anything."""
        budget = self.prefill_chunk
        while self.prefilling is not None and budget > 0:
            job = self.prefilling
            done_before = job.prefilled
            self._guard(lambda left=budget: self._prefill_step(left), [job])
            budget -= max(1, job.prefilled - done_before)  # a failed job (released) counts as a byte: on to the next
            self._admit()
        return budget < self.prefill_chunk

    def _prefill_step(self, budget: int) -> None:
        """Up to `budget` more bytes of the prompt in progress; at its end, it joins the batch with its first token."""
        job = self.prefilling
        n = len(job.req.prompt)
        start, end = job.prefilled, min(job.prefilled + budget, n)
        out = self.runner.prefill(job.seq, self.runner.prefill_row, start, end)
        job.prefilled = end
        if end < n:
            return
        self.prefilling = None
        job.slot = len(self.active)
        self.runner.move(self.runner.prefill_row, job.slot, n)
        self.active.append(job)
        self._emit([job], [out])

    def _decode_step(self) -> None:
        jobs = list(self.active)
        self._emit(jobs, self.runner.decode([job.seq for job in jobs]))

    def _exact_step(self, job: Job) -> None:
        """One prompt chunk, or one token, of an exact job, in its own cache row."""
        n = len(job.req.prompt)
        if job.prefilled < n:
            start, end = job.prefilled, min(job.prefilled + self.prefill_chunk, n)
            out = self.runner.prefill_exact(job.seq, job.slot, start, end)
            job.prefilled = end
            if end < n:
                return
        else:
            out = self.runner.decode_exact(job.seq, job.slot)
        self._emit([job], [out])

    def _emit(self, jobs: list[Job], outs: list[TokenOutput | None]) -> None:
        """Send each job its new token (None: its sampling failed); finish those that end."""
        now = time.perf_counter()
        done = []
        ctx = self.config.context_length
        for job, out in zip(jobs, outs):
            if out is None:
                done.append((job, FinishReason.ERROR))
                continue
            if job.t_first is None:
                job.t_first = now
            job.seq.append(out.token)
            self.tokens_generated += 1
            delta, stopped = job.assembler.push(out.token)
            reason = (
                FinishReason.STOP
                if stopped
                else finish_reason(job.generated, job.req.max_new_tokens, len(job.seq.tokens), ctx)
            )
            if reason in (FinishReason.LENGTH, FinishReason.CONTEXT_FULL):
                delta += job.assembler.finish()  # a cut-off character goes out with the last token
            rows = [layer.tolist() for layer in out.attention] if out.attention is not None else None
            explain = (out.explain.logit, out.explain.top(job.req.explain_top)) if out.explain is not None else None
            job.emit(TokenEvent(out.token, out.logprob, out.top_logprobs, delta, rows, explain, at=now))
            if reason:
                done.append((job, reason))
        for job, reason in sorted(done, key=lambda d: -d[0].slot):  # release from the top so rows stay valid
            self._release(job)
            job.finish(reason, "internal error while sampling" if reason == FinishReason.ERROR else "")


def _deliver_all(by_job: dict[Job, list[TokenEvent | FinishEvent]]) -> None:
    for job, events in by_job.items():
        job.deliver(events)
