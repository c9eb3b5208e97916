"""The engine's scheduling, unit-tested with a fake runner: no model, every runner call recorded.

The fake keeps what each cache row holds, so a decode step can check that every job's row holds exactly
that job's tokens: row compaction, chunked prefill and the move from the prefill row are checked by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import types

import pytest
import torch

from model.generate import FinishReason
from model.sequence import Sequence, TokenOutput
from server.engine import Engine
from server.inspection import Inspection
from server.jobs import EngineRequest, FinishEvent, QueueFull, TokenEvent
from support import TINY_CONFIG


class FakeRunner:
    """The runner's interface: the next token is always the last one + 1; the 'cache' is a list per row."""

    def __init__(self, max_batch: int = 4, exact_rows: int = 2):
        self.config = TINY_CONFIG  # context 64
        self.max_batch = max_batch
        self.prefill_row = max_batch
        self.exact_rows = exact_rows
        self.rows: dict[int, list[int]] = {}
        self.calls: list[tuple] = []
        self.on_prefill = lambda seq, start, end: None  # hooks, called on the worker thread
        self.on_decode = lambda seqs: None
        self.fail_decode = lambda seqs: False
        self.fail_sampling = lambda seq: False
        self.step_seconds = 0.0  # how long a decode step takes

    def warmup(self) -> None:
        self.calls.append(("warmup",))

    def prefill(self, seq: Sequence, row: int, start: int, end: int) -> TokenOutput | None:
        self.calls.append(("prefill", row, start, end))
        assert self.rows.get(row, [])[:start] == seq.tokens[:start] or start == 0, "chunks arrive in order"
        self.rows[row] = self.rows.get(row, [])[:start] + seq.tokens[start:end]
        self.on_prefill(seq, start, end)
        return self._next(seq) if end == len(seq.tokens) else None

    def decode(self, seqs: list[Sequence]) -> list[TokenOutput | None]:
        self.calls.append(("decode", len(seqs)))
        self.on_decode(seqs)
        time.sleep(self.step_seconds)
        if self.fail_decode(seqs):
            raise RuntimeError("injected step failure")
        for i, seq in enumerate(seqs):
            assert self.rows[i] == seq.tokens[:-1], f"row {i} holds another sequence's tokens"
            self.rows[i].append(seq.tokens[-1])
        return [self._next(seq) for seq in seqs]

    def exact_row(self, i: int) -> int:
        return self.max_batch + 1 + i

    def prefill_exact(self, seq: Sequence, row: int, start: int, end: int) -> TokenOutput | None:
        assert seq.exact and row > self.prefill_row, "an exact sequence, in an exact row"
        self.calls.append(("prefill_exact", row, start, end))
        assert self.rows.get(row, [])[:start] == seq.tokens[:start], f"row {row} holds another sequence's tokens"
        self.rows[row] = self.rows.get(row, [])[:start] + seq.tokens[start:end]
        return self._next(seq) if end == len(seq.tokens) else None

    def decode_exact(self, seq: Sequence, row: int) -> TokenOutput | None:
        return self.prefill_exact(seq, row, len(seq.tokens) - 1, len(seq.tokens))

    @contextlib.contextmanager
    def every_core(self):
        self.calls.append(("every_core",))
        yield

    def move(self, src: int, dst: int, length: int) -> None:
        self.calls.append(("move", src, dst, length))
        self.rows[dst] = self.rows[src][:length]

    def _next(self, seq: Sequence) -> TokenOutput | None:
        if self.fail_sampling(seq):
            return None
        token = (seq.tokens[-1] + 1) % 256
        return TokenOutput(token, 0.0, torch.zeros(256), [(token, 0.0)][: seq.top_logprobs], None)


def run(runner: FakeRunner, scenario, **engine_args):
    """Start an engine on the fake runner, await scenario(engine), stop the engine."""
    engine = Engine(runner, **engine_args)
    engine.start()

    async def main():
        return await scenario(engine)

    try:
        return asyncio.run(main())
    finally:
        engine.stop()


async def collect(job) -> tuple[list[TokenEvent], FinishEvent]:
    events = [event async for event in job.events()]
    return events[:-1], events[-1]


def request(prompt: bytes, max_new_tokens: int, **kw) -> EngineRequest:
    return EngineRequest(prompt=list(prompt), max_new_tokens=max_new_tokens, **kw)


def test_tokens_come_in_order_and_the_job_finishes_at_its_length():
    runner = FakeRunner()

    async def scenario(engine):
        return await collect(engine.submit(request(b"ab", 5, top_logprobs=1)))

    tokens, finish = run(runner, scenario)
    assert [t.id for t in tokens] == [ord("c"), ord("d"), ord("e"), ord("f"), ord("g")]
    assert "".join(t.text for t in tokens) == finish.text == "cdefg"
    assert tokens[0].top_logprobs == [(ord("c"), 0.0)]
    assert finish.reason == FinishReason.LENGTH and finish.completion_tokens == 5 and finish.prompt_tokens == 2
    assert runner.calls[0] == ("warmup",)
    assert ("move", runner.prefill_row, 0, 2) in runner.calls, "prefilled aside, then moved into row 0"


def test_a_job_that_does_not_stream_gets_its_tokens_with_its_finish():
    runner = FakeRunner()
    runner.step_seconds = 0.01

    async def scenario(engine):
        streamed, whole = engine.submit(request(b"ab", 10)), engine.submit(request(b"ab", 10, stream=False))

        async def batches(job):
            return [batch async for batch in job.batches()]

        return await asyncio.gather(batches(streamed), batches(whole))

    streamed, whole = run(runner, scenario)
    assert len(whole) == 1, "all eleven came together, with the finish"
    assert len(streamed) > 1, "a stream is delivered as its tokens are made"
    streamed_ids = [e.id for batch in streamed for e in batch if isinstance(e, TokenEvent)]
    assert [e.id for e in whole[0][:-1]] == streamed_ids, "same tokens"
    produced = [e.at for e in whole[0][:-1]]
    assert produced == sorted(produced) and produced[-1] - produced[0] > 0.04, "stamped when they were made"


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps():
    runner = FakeRunner()
    decoding, second_sent = threading.Event(), threading.Event()

    def first_decode_waits_for_the_second(seqs):
        decoding.set()
        second_sent.wait(5.0)

    runner.on_decode = first_decode_waits_for_the_second

    async def scenario(engine):
        first = engine.submit(request(b"x", 30))
        await asyncio.to_thread(decoding.wait, 5.0)  # first is decoding when the long prompt arrives
        second = engine.submit(request(bytes(range(65, 75)), 3))
        second_sent.set()
        return await asyncio.gather(collect(first), collect(second))

    (_, f1), (tokens, f2) = run(runner, scenario, prefill_chunk=4)
    assert f1.reason == f2.reason == FinishReason.LENGTH
    prefills = [c for c in runner.calls if c[0] == "prefill" and c[3] > 1]
    assert prefills == [
        ("prefill", runner.prefill_row, 0, 4),
        ("prefill", runner.prefill_row, 4, 8),
        ("prefill", runner.prefill_row, 8, 10),
    ]
    between = runner.calls.index(prefills[0]), runner.calls.index(prefills[-1])
    assert any(c[0] == "decode" for c in runner.calls[between[0] : between[1]]), "decoding went on meanwhile"
    assert [t.id for t in tokens] == [75, 76, 77]


def test_a_finished_row_is_refilled_by_the_last_one_and_everyone_stays_correct():
    runner = FakeRunner(max_batch=4)
    all_submitted = threading.Event()
    runner.on_prefill = lambda seq, start, end: all_submitted.wait(5.0)  # all four in the queue first

    async def scenario(engine):
        jobs = [engine.submit(request(bytes([10 * (i + 1)]), n)) for i, n in enumerate((20, 3, 20, 20))]
        all_submitted.set()
        return await asyncio.gather(*(collect(job) for job in jobs))

    results = run(runner, scenario)
    for i, (tokens, finish) in enumerate(results):
        start = 10 * (i + 1)
        assert [t.id for t in tokens] == list(range(start + 1, start + 1 + len(tokens)))
        assert finish.reason == FinishReason.LENGTH
    moves = [c for c in runner.calls if c[0] == "move" and c[1] != runner.prefill_row]
    assert moves and moves[0][2] == 1, "the short job's row 1 was refilled by the job in the last row"


def test_cancelling_during_prefill_frees_the_slot_and_the_engine_serves_on():
    runner = FakeRunner()
    jobs = []

    def cancel_after_first_chunk(seq, start, end):
        if start == 0 and len(seq.tokens) == 12:
            jobs[0].cancel()  # the client goes away while its prompt is being prefilled

    runner.on_prefill = cancel_after_first_chunk

    async def scenario(engine):
        jobs.append(engine.submit(request(b"0123456789ab", 5)))
        while engine.active_count or engine.queue_length:  # until the engine has let the cancelled job go
            await asyncio.sleep(0.001)
        after = await collect(engine.submit(request(b"z", 2)))
        return after, engine.active_count, engine.queue_length

    (tokens, finish), active, waiting = run(runner, scenario, prefill_chunk=4)
    assert [c[2:] for c in runner.calls if c[0] == "prefill" and c[3] > 1] == [(0, 4)], "no chunk after the cancel"
    assert not any(c[0] == "decode" and c[1] > 1 for c in runner.calls)
    assert finish.reason == FinishReason.LENGTH and [t.id for t in tokens] == [ord("{"), ord("|")]
    assert active == 0 and waiting == 0


def test_a_failing_step_fails_its_jobs_and_the_engine_serves_on():
    runner = FakeRunner()
    runner.fail_decode = lambda seqs: len(seqs[0].tokens) == 4  # the step that would make the fourth token
    results = []

    async def scenario(engine):
        results.append(await collect(engine.submit(request(b"a", 10))))
        runner.fail_decode = lambda seqs: False
        return await collect(engine.submit(request(b"a", 3)))

    tokens, finish = run(runner, scenario)
    failed_tokens, failed = results[0]
    assert failed.reason == FinishReason.ERROR and len(failed_tokens) == 3
    assert finish.reason == FinishReason.LENGTH and len(tokens) == 3


def test_a_failed_sampling_ends_that_job_only():
    runner = FakeRunner()
    runner.fail_sampling = lambda seq: seq.tokens[0] == ord("!") and len(seq.tokens) > 3

    async def scenario(engine):
        bad, good = engine.submit(request(b"!", 10)), engine.submit(request(b"a", 10))
        return await asyncio.gather(collect(bad), collect(good))

    (_, bad), (tokens, good) = run(runner, scenario)
    assert bad.reason == FinishReason.ERROR and bad.completion_tokens == 3
    assert good.reason == FinishReason.LENGTH and [t.id for t in tokens] == list(range(98, 108))


def test_stop_strings_end_a_job_and_are_not_in_its_text():
    async def scenario(engine):
        return await collect(engine.submit(request(b"a", 20, stop=[b"ef"])))

    tokens, finish = run(FakeRunner(), scenario)
    assert finish.reason == FinishReason.STOP and finish.text == "bcd"
    assert "".join(t.text for t in tokens) == "bcd"


def test_nothing_to_generate_finishes_without_touching_the_runner():
    runner = FakeRunner()

    async def scenario(engine):
        zero = await collect(engine.submit(request(b"abc", 0)))
        full = await collect(engine.submit(request(bytes(64), 5)))  # the prompt fills the 64-byte context
        return zero, full

    (t0, zero), (t1, full) = run(runner, scenario)
    assert (t0, t1) == ([], []) and zero.reason == FinishReason.LENGTH and full.reason == FinishReason.CONTEXT_FULL
    assert runner.calls == [("warmup",)]


def test_a_job_past_its_deadline_times_out():
    runner = FakeRunner()
    release = threading.Event()
    runner.on_prefill = lambda seq, start, end: release.wait(1.0)  # a slow prefill

    async def scenario(engine):
        return await collect(engine.submit(request(b"a" * 8, 50, timeout=0.2)))

    try:
        _, finish = run(runner, scenario, prefill_chunk=1)
    finally:
        release.set()
    assert finish.reason == FinishReason.TIMEOUT


def test_a_full_queue_refuses_with_queue_full():
    runner = FakeRunner(max_batch=1)
    hold = threading.Event()
    runner.on_prefill = lambda seq, start, end: hold.wait(5.0)

    async def scenario(engine):
        jobs = [engine.submit(request(b"a", 1))]  # taken into prefill, where it waits
        while engine.prefilling is None:
            await asyncio.sleep(0.001)
        jobs.append(engine.submit(request(b"b", 1)))  # the one place in the queue
        with pytest.raises(QueueFull):
            engine.submit(request(b"c", 1))
        hold.set()
        return await asyncio.gather(*(collect(job) for job in jobs))

    results = run(runner, scenario, max_queue=1)
    assert [finish.reason for _, finish in results] == [FinishReason.LENGTH] * 2


def test_exact_jobs_run_one_by_one_in_rows_of_their_own_beside_the_batch():
    """Jobs that switch heads off or explain their tokens never join the batched step: each has an exact row (two
    here), a third waits for one, and the batched jobs' rows and steps are as without them."""
    runner = FakeRunner(max_batch=4, exact_rows=2)
    runner.step_seconds = 0.002

    async def scenario(engine):
        plain = [engine.submit(request(bytes([10 * (i + 1)]), 8)) for i in range(2)]
        exact = [
            engine.submit(request(bytes([100 + 10 * i] * 6), 5, heads_off=[(0, i)], explain_top=3 * (i % 2)))
            for i in range(3)
        ]
        return await asyncio.gather(*(collect(job) for job in plain + exact)), engine.active_count

    results, active = run(runner, scenario, prefill_chunk=4)
    for tokens, finish in results:
        assert finish.reason == FinishReason.LENGTH
        assert [t.id for t in tokens] == list(range(tokens[0].id, tokens[0].id + len(tokens)))
    assert [t.id for t in results[2][0]] == list(range(101, 106)) and active == 0
    assert all(c[1] <= 4 for c in runner.calls if c[0] == "decode"), "no exact job in a batched step"
    exact_rows = {c[1] for c in runner.calls if c[0] == "prefill_exact"}
    assert exact_rows == {runner.exact_row(0), runner.exact_row(1)}, "two exact rows, the third job reused one"
    chunks = [c[2:] for c in runner.calls if c[0] == "prefill_exact" and c[3] - c[2] > 1]
    assert sorted(chunks) == [(0, 4)] * 3 + [(4, 6)] * 3, "prompts in chunks of prefill_chunk"


@dataclasses.dataclass(frozen=True, kw_only=True)
class WhereAmI(Inspection[tuple]):
    """An inspection job that says on which thread it ran, and with which llm; or fails."""

    fail: bool = False

    def run(self, llm):
        if self.fail:
            raise ValueError("injected inspection failure")
        return threading.current_thread().name, llm


def test_an_inspection_job_runs_on_the_worker_thread_and_its_failure_reaches_only_its_caller():
    runner = FakeRunner()
    runner.model = object()
    llm = types.SimpleNamespace(model=runner.model)

    async def scenario(engine):
        job = engine.submit(request(b"ab", 20))
        where = await engine.inspect(WhereAmI(ids=[1, 2], heads_off=[]))
        with pytest.raises(ValueError, match="injected"):
            await engine.inspect(WhereAmI(ids=[1], heads_off=[], fail=True))
        return where, await collect(job)

    (thread, used), (tokens, finish) = run(runner, scenario, llm=llm)
    assert thread == "tinyllm-engine" and used is llm
    assert ("every_core",) in runner.calls, "a whole-text job may use every core"
    assert finish.reason == FinishReason.LENGTH and len(tokens) == 20, "the generation beside it went on"


def test_an_engine_inspects_only_the_model_its_runner_serves():
    runner = FakeRunner()
    runner.model = object()
    with pytest.raises(ValueError, match="llm.model is not runner.model"):
        Engine(runner, llm=types.SimpleNamespace(model=object()))

    async def scenario(engine):
        with pytest.raises(RuntimeError, match="runs no inspection"):
            await engine.inspect(WhereAmI(ids=[1], heads_off=[]))

    run(runner, scenario)
