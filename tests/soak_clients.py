"""The soak's clients (tests/test_soak.py): each sends request after request of its kind (tests/soak_calls.py) until
the deadline, and the tally counts every answer by route and status and notes every one that is wrong: a status other
than the expected one, a 4xx without the error envelope, a stream with an error event or without its [DONE], a JSON
body from another model, a connection error. A resident-memory sampler reads the server process from /proc."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from soak_calls import KINDS, Call, Model
from support import assert_envelope, rss_kib

REQUEST_TIMEOUT = 150.0  # past the server's own 120 s: a request that outlives it has hung, and fails as a timeout


@dataclass
class Tally:
    requests: Counter = field(default_factory=Counter)  # (route, status) -> answers
    streams_completed: int = 0
    streams_left: int = 0  # walked away from by their client mid-way
    stream_events: int = 0
    transport_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, call: Call, what: str) -> None:
        self.failures.append(f"{call.method} {call.route} {call.json if call.content is None else ''}: {what}"[:400])


def wrong_answer(call: Call, r: httpx.Response) -> str | None:
    """What is wrong with a whole answer, or None: the expected status, with the error envelope naming the expected
    param for a refusal, and the asked model in a 200 JSON body that names one."""
    if call.expect != 200:
        try:
            assert_envelope(r, call.expect, call.param, openai=call.openai)
        except (AssertionError, ValueError) as e:
            return f"not the {call.expect} envelope: {e}"[:300]
        return None
    if r.status_code != 200:
        return f"{r.status_code}: {r.text[:200]}"
    if r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        if call.model and isinstance(body, dict) and body.get("model", call.model) != call.model:
            return f"answered by {body['model']}, not {call.model}"
    return None


async def pieces(data: bytes, size: int = 1 << 16) -> AsyncIterator[bytes]:
    """A body sent chunked, without Content-Length: the server counts it as it arrives."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def send(c: httpx.AsyncClient, call: Call, tally: Tally) -> None:
    try:
        if call.stream:
            return await send_stream(c, call, tally)
        content = pieces(call.content) if call.chunked else call.content
        r = await c.request(
            call.method, call.path, json=call.json, params=call.params, content=content, headers=call.headers
        )
        tally.requests[call.route, r.status_code] += 1
        if (problem := wrong_answer(call, r)) is not None:
            tally.fail(call, problem)
    except httpx.TransportError as e:
        tally.transport_errors.append(f"{call.method} {call.route}: {e!r}")


async def send_stream(c: httpx.AsyncClient, call: Call, tally: Tally) -> None:
    """Read a stream's events to [DONE], or walk away after call.leave_after of them (closing the connection)."""
    async with c.stream(call.method, call.path, json=call.json) as r:
        tally.requests[call.route, r.status_code] += 1
        if r.status_code != 200:
            await r.aread()
            tally.fail(call, wrong_answer(call, r) or f"{r.status_code}")
            return
        events, last, lines = 0, None, r.aiter_lines()
        while call.leave_after is None or events < call.leave_after:
            line = await anext(lines, None)
            if line is None:
                break
            if not line:
                continue
            events, last = events + 1, line
            if line != "data: [DONE]" and "error" in json.loads(line.removeprefix("data: ")):
                tally.fail(call, f"error event: {line[:200]}")
        else:  # the client walks away: closing the response closes the connection
            tally.streams_left += 1
            tally.stream_events += events
            return
        tally.stream_events += events
        if last != "data: [DONE]":
            tally.fail(call, f"stream ended without [DONE] after {events} events: {last!r}")
        else:
            tally.streams_completed += 1


async def client(
    c: httpx.AsyncClient, kind: str, models: list[Model], rng: random.Random, deadline: float, tally: Tally
) -> None:
    """Requests of one kind: first each of them once per model (so that every route is reached however short the
    run), then one drawn at random for a model drawn at random until the deadline, up to 50 ms apart."""
    make = KINDS[kind]
    for m in models:
        for call in make(rng, m):
            await send(c, call, tally)
    while time.monotonic() < deadline:
        await send(c, rng.choice(make(rng, rng.choice(models))), tally)
        await asyncio.sleep(rng.uniform(0, 0.05))


def run_clients(url: str, models: list[Model], seconds: float, mix: dict[str, int], seed: int = 0) -> Tally:
    """mix: how many clients of each kind (soak_calls.KINDS) run at once, for `seconds`."""
    tally = Tally()
    kinds = [kind for kind, n in mix.items() for _ in range(n)]

    async def main():
        limits = httpx.Limits(max_connections=len(kinds) + 4, max_keepalive_connections=len(kinds) + 4)
        async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits) as c:
            deadline = time.monotonic() + seconds
            rngs = [random.Random(seed * 1000 + i) for i in range(len(kinds))]
            await asyncio.gather(*[client(c, k, models, rng, deadline, tally) for k, rng in zip(kinds, rngs)])

    asyncio.run(main())
    return tally


class RssSampler:
    """Reads a process's resident memory every `every` seconds while the block runs: (seconds since start, MiB)."""

    def __init__(self, pid: int, every: float = 1.0):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _poll(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._t0, rss_kib(self.pid) / 1024))
            if self._stop.wait(self.every):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
