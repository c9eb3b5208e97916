"""Limits, load and faults against a live server (loopback only, bounded in count and time).

Each limit answers the one who crosses it with a clear 4xx/503 while the others carry on and finish: those tests
serve the app in a thread (tests/live.py) and hold its engine, so that the others are surely still running when the
limit is crossed, on a fast machine too. A load of 64 streaming clients against a server process (a third walking
away mid-stream) leaves no 5xx, every KV-cache slot free, memory near its idle level and greedy bytes unchanged.
Graceful shutdown: tests/test_shutdown_live.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import httpx
import pytest

from live import live_app, until, wait_for
from server.process import running_server
from support import assert_envelope, metric, rss_kib, sse_events, start_fails

LONG = 2000  # tokens: at a loop every 10 ms, 20 s of decoding, far past a request timeout of 2 s


async def stream_all(client: httpx.AsyncClient, body: dict, path: str = "/v1/generate") -> tuple[int, list[str]]:
    async with client.stream("POST", path, json={**body, "stream": True}) as r:
        lines = [line async for line in r.aiter_lines() if line]
        return r.status_code, lines


# ------------------------------------------------------------------ limits that protect everyone


def test_body_limit_refuses_one_while_streams_finish(tiny_checkpoint):
    with live_app(tiny_checkpoint, max_body_bytes=4096) as live:
        gate = live.gate()

        async def main():
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
                body = {"prompt": "go", "max_new_tokens": 60, "temperature": 0.8, "utf8": "any"}
                streams = [asyncio.create_task(stream_all(c, {**body, "seed": i})) for i in range(4)]
                await asyncio.to_thread(gate.take_in, 4)  # the four are decoding, held between two steps
                big = await c.post("/v1/generate", json={"prompt": "z" * 5000})
                in_flight = len(live.engine().active)
                gate.open()
                return big, in_flight, await asyncio.gather(*streams)

        big, in_flight, done = asyncio.run(main())
    assert_envelope(big, 413, kind="request_too_large")
    assert in_flight == 4, "the streams were not in flight when the big body was refused"
    for status, lines in done:
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert sse_events(lines)[-1]["usage"]["completion_tokens"] == 60


def test_request_timeout_ends_the_long_one_while_short_ones_finish(long_checkpoint):
    """The engine runs a loop every 10 ms at most, so LONG tokens take 20 s on any machine: the long requests are
    in flight at their 2 s deadline, while a short one's 8 tokens take 70 ms."""
    with live_app(long_checkpoint, request_timeout=2.0) as live:
        engine, gate = live.engine(), live.gate()

        async def main():
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
                long = asyncio.create_task(c.post("/v1/generate", json={"prompt": "a", "max_new_tokens": LONG}))
                long_stream = asyncio.create_task(stream_all(c, {"prompt": "b", "max_new_tokens": LONG}))
                await asyncio.to_thread(gate.take_in, 2)
                gate.pace(0.01)
                short = [
                    await c.post("/v1/generate", json={"prompt": "c", "max_new_tokens": 8, "seed": i, "utf8": "any"})
                    for i in range(5)
                ]
                await until(lambda: engine.active_count == 0, "the long requests to time out")
                return await long, await long_stream, short

        long, (status, lines), short = asyncio.run(main())
        assert_envelope(long, 504, kind="timeout")
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert sse_events(lines)[-1]["error"]["type"] == "timeout"  # the stream ends with one error event
        assert len(lines) < LONG // 2, "the stream ran on past its deadline"
        assert all(r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8 for r in short)
        assert metric(live.url, "tinyllm_active_sequences") == 0


def test_max_streams_refuses_the_extra_stream_while_the_open_ones_finish(long_checkpoint):
    with live_app(long_checkpoint, max_streams=2) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        gate = live.gate()
        body = {"prompt": "s", "max_new_tokens": 400, "temperature": 0, "utf8": "any", "stream": True}
        with contextlib.ExitStack() as opened:
            streams = []
            for n in (1, 2):  # each open (its headers came back), taken in by the engine, then its first event read
                r = opened.enter_context(c.stream("POST", "/v1/generate", json=body))
                gate.take_in(n)
                streams.append(r.iter_lines())
                assert next(streams[-1]).startswith("data: ")
            third = c.post("/v1/generate", json=body, timeout=10)  # a refusal answers at once
            openai_third = c.post("/v1/completions", json={"model": "long", "prompt": "s", "stream": True}, timeout=10)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # not a stream: it needs steps to answer
                plain = pool.submit(c.post, "/v1/generate", json={"prompt": "p", "max_new_tokens": 5})
                gate.take_in(3)
                gate.allow(10)  # its 5 tokens take 4 loops; the streams get as many of their 400
                plain = plain.result()
            assert len(live.engine().active) == 2, "the open streams ended before the refusals were checked"
            gate.open()
            rest = [[line for line in lines if line] for lines in streams]
        again = c.post("/v1/generate", json={**body, "max_new_tokens": 5})  # the slots came back
    error = assert_envelope(third, 503, kind="overloaded")
    assert third.headers["retry-after"] == "1" and "2 streams" in error["message"]
    assert_envelope(openai_third, 503, openai=True, kind="overloaded")
    assert set(openai_third.json()["error"]) == {"message", "type", "param", "code"}
    assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 5
    for lines in rest:
        assert lines[-1] == "data: [DONE]" and sse_events(lines)[-1]["usage"]["completion_tokens"] == 400
    assert again.status_code == 200 and again.text.rstrip().endswith("data: [DONE]")


# ------------------------------------------------------------------ load with faults


async def one_client(c: httpx.AsyncClient, rng: random.Random, deadline: float, walk_away: bool, stats: dict):
    """Stream request after request until the deadline; a walker leaves each stream at a random point."""
    while time.monotonic() < deadline:
        body = {
            "prompt": rng.choice(["ROMEO:", "To be", "é🙂", "\x00ctl"]),
            "max_new_tokens": rng.randint(8, 56),
            "temperature": rng.choice([0, 0.8, 1.2]),
            "top_k": rng.choice([0, 20]),
            "stream": True,
        }
        leave_after = rng.randint(0, 20) if walk_away else None
        try:
            async with c.stream("POST", "/v1/generate", json=body) as r:
                stats["status"][r.status_code] = stats["status"].get(r.status_code, 0) + 1
                if r.status_code != 200:
                    await r.aread()
                    continue
                n = 0
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    if line != "data: [DONE]" and "error" in json.loads(line[6:]):
                        stats["stream_errors"] += 1
                    n += 1
                    if leave_after is not None and n > leave_after:
                        stats["disconnects"] += 1
                        break
                else:
                    stats["completed"] += 1
                stats["events"] += n
        except httpx.TransportError as e:
            stats["transport_errors"].append(repr(e))


def run_load(url: str, clients: int, seconds: float, seed: int = 0) -> dict:
    stats = {"status": {}, "events": 0, "completed": 0, "disconnects": 0, "stream_errors": 0, "transport_errors": []}

    async def main():
        limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            deadline = time.monotonic() + seconds
            await asyncio.gather(
                *[one_client(c, random.Random(seed * 1000 + i), deadline, i % 3 == 0, stats) for i in range(clients)]
            )

    asyncio.run(main())
    return stats


def load_and_check(checkpoint: Path, clients: int, seconds: float) -> dict:
    with running_server(checkpoint, "--max-batch", "16") as srv:
        greedy = {"prompt": "ROMEO:", "max_new_tokens": 50, "temperature": 0}
        before = httpx.post(f"{srv.url}/v1/generate", json=greedy).json()["text"]
        run_load(srv.url, 8, 2, seed=99)  # warm the allocator up before the idle reading
        time.sleep(0.5)
        idle = rss_kib(srv.proc.pid)
        t0 = time.monotonic()
        stats = run_load(srv.url, clients, seconds)
        stats["seconds"] = round(time.monotonic() - t0, 1)
        wait_for(lambda: metric(srv.url, "tinyllm_active_sequences") == 0, "the walkers' sequences to be let go", 10)
        time.sleep(0.5)
        stats.update(idle_rss_mib=round(idle / 1024, 1), after_rss_mib=round(rss_kib(srv.proc.pid) / 1024, 1))
        text = httpx.get(f"{srv.url}/metrics").text
        # /health answers 503 while the server warms up (a readiness probe's answer, not an error)
        server_5xx = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tinyllm_requests_total") and 'status="5' in line and 'route="/health"' not in line
        )
        stats["server_5xx"] = server_5xx
        assert not stats["transport_errors"], stats["transport_errors"][:5]
        assert set(stats["status"]) == {200}, stats["status"]
        assert server_5xx == 0 and stats["stream_errors"] == 0, stats
        assert stats["disconnects"] > 0 and stats["completed"] > 0, stats
        assert metric(srv.url, "tinyllm_kv_slots_free") == 16
        assert metric(srv.url, "tinyllm_active_sequences") == 0 and metric(srv.url, "tinyllm_queue_length") == 0
        assert stats["after_rss_mib"] < stats["idle_rss_mib"] * 1.25 + 32, stats
        assert httpx.post(f"{srv.url}/v1/generate", json=greedy).json()["text"] == before
        assert "Traceback" not in srv.log.read_text()
    print(f"load {clients} clients x {seconds}s: {stats}")
    return stats


def test_load_64_streaming_clients_a_third_walking_away(tiny_checkpoint):
    load_and_check(tiny_checkpoint, 64, float(os.environ.get("TINYLLM_LOAD_SECONDS", "15")))


@pytest.mark.slow
def test_load_64_streaming_clients_for_a_minute(tiny_checkpoint):
    load_and_check(tiny_checkpoint, 64, 60)


# ------------------------------------------------------------------ corrupt checkpoint at start-up


def test_startup_with_a_corrupt_header_fails_naming_the_file(tiny_checkpoint, tmp_path):
    broken = tmp_path / "garbage"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:8] + b"\x00garbage!" * 4 + data[8 + 36 :])  # same size, the header is not JSON
    msg = start_fails(broken)
    assert "model.safetensors" in msg and "unreadable" in msg
