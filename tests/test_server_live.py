"""Integration tests over HTTP with httpx: against a real `python -m server` process on a free port, and where a test
must decide a race (a disconnect, a full queue), against the app served by uvicorn in a thread with its engine held
(tests/live.py)."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest

from live import live_app, wait_for
from model import TinyLLM
from model.generate import generate
from model.sampling import SamplingParams
from server.process import running_server
from support import assert_envelope, metric, sse_events, start_fails


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    with running_server(tiny_checkpoint, "--max-batch", "8", "--max-queue", "4") as srv:
        yield srv


def test_generate_greedy_matches_model_package(server, tiny_checkpoint):
    r = httpx.post(f"{server.url}/v1/generate", json={"prompt": "Hello", "max_new_tokens": 50, "temperature": 0})
    assert r.status_code == 200
    llm = TinyLLM.load(tiny_checkpoint, device="cpu")
    expected = [s.token for s in generate(llm.runner, list(b"Hello"), 50, SamplingParams(temperature=0))]
    assert [t["id"] for t in r.json()["tokens"]] == expected


def test_stream_over_http(server):
    body = {"prompt": "abc", "max_new_tokens": 30, "temperature": 0.8, "seed": 5}
    plain = httpx.post(f"{server.url}/v1/generate", json=body).json()
    with httpx.stream("POST", f"{server.url}/v1/generate", json={**body, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = sse_events(lines)
    assert "".join(e["text"] for e in events[:-1]) == plain["text"] == events[-1]["text"]
    assert events[-1]["usage"]["completion_tokens"] == 30


def test_disconnect_mid_stream_frees_the_slot(tiny_checkpoint):
    with live_app(tiny_checkpoint, max_batch=8) as live:
        engine, gate = live.engine(), live.gate()  # no decode step runs until the test lets it
        body = {"prompt": "abc", "max_new_tokens": 60, "temperature": 1.0, "seed": 1, "stream": True}
        with httpx.stream("POST", f"{live.url}/v1/generate", json=body) as r:
            assert next(r.iter_lines()).startswith("data: ")  # the prompt's first token (its prefill's)
        wait_for(lambda: engine.active and engine.active[0].cancelled, "the server to see the client leave")
        gate.open()
        wait_for(lambda: engine.active_count == 0, "the disconnected sequence to give its slot back")
        assert engine.tokens_generated == 2, "generation went on after the client left (one step was in flight)"
        assert metric(live.url, "tinyllm_kv_slots_free") == 8
        assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}
        again = httpx.post(f"{live.url}/v1/generate", json={**body, "stream": False})
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 60


def test_concurrent_requests_all_progress_and_health_answers(tiny_checkpoint):
    """/health answers while seven generations are in flight (held between two steps, so none can have ended), and
    each request gets the bytes it gets alone."""
    bodies = [{"prompt": f"request {i}", "max_new_tokens": 40, "temperature": 0.9, "seed": i} for i in range(6)]
    with live_app(tiny_checkpoint, max_batch=8) as live:
        alone = [httpx.post(f"{live.url}/v1/generate", json=b).json()["text"] for b in bodies]
        gate = live.gate()

        async def main():
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
                tasks = [asyncio.create_task(client.post("/v1/generate", json=b)) for b in bodies]
                long = asyncio.create_task(client.post("/v1/generate", json={"prompt": "x", "max_new_tokens": 63}))
                await asyncio.to_thread(gate.take_in, 7)
                health = await client.get("/health", timeout=10)
                in_flight = len(live.engine().active)
                gate.open()
                together = [(await t).json()["text"] for t in tasks]
                assert (await long).status_code == 200
                return together, health, in_flight

        together, health, in_flight = asyncio.run(main())
    assert health.status_code == 200 and in_flight == 7, "/health waited for the generations"
    assert together == alone  # each request's bytes do not depend on what else is in the batch


def test_queue_full_is_503_with_retry_after(tiny_checkpoint):
    """One slot, one place in the queue: of six requests at once, the first is generating (held, so it cannot end
    while the others arrive), the second waits, the other four are refused at once."""
    with live_app(tiny_checkpoint, max_batch=1, max_queue=1) as live:
        gate = live.gate()

        async def main():
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
                body = {"prompt": "q", "max_new_tokens": 63, "temperature": 0}
                tasks = [asyncio.create_task(client.post("/v1/generate", json=body)) for _ in range(6)]
                pending = set(tasks)
                while len(pending) > 2:  # the refusals come back while the engine is held
                    done, pending = await asyncio.wait(pending, timeout=30, return_when=asyncio.FIRST_COMPLETED)
                    assert done, f"{len(pending)} requests unanswered: more than one slot and one place were given"
                gate.open()
                return await asyncio.gather(*tasks)

        responses = asyncio.run(main())
        assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503, 503]
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] and busy.json()["error"]["type"] == "overloaded"
        assert all(r.json()["usage"]["completion_tokens"] == 63 for r in responses if r.status_code == 200)
        assert httpx.post(f"{live.url}/v1/generate", json={"prompt": "q", "max_new_tokens": 3}).status_code == 200


def test_metrics_exposition(server):
    httpx.post(f"{server.url}/v1/generate", json={"prompt": "m", "max_new_tokens": 5})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'tinyllm_requests_total{route="/v1/generate",status="200"}' in text
    assert "tinyllm_time_to_first_token_seconds_bucket" in text
    assert "tinyllm_inter_token_latency_seconds_count" in text
    assert 'tinyllm_queue_length{model="tiny"} 0.0' in text  # one sample per model, named after its folder


def test_startup_fails_fast_naming_the_problem(tiny_checkpoint, tmp_path):
    assert "config.json" in start_fails(tmp_path / "nowhere")
    broken = tmp_path / "truncated"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    msg = start_fails(broken)
    assert "model.safetensors" in msg and "truncated" in msg
    mismatch = tmp_path / "mismatch"
    shutil.copytree(tiny_checkpoint, mismatch)
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["d_model"] = 64
    (mismatch / "config.json").write_text(json.dumps(cfg))
    msg = start_fails(mismatch)
    assert "model.safetensors" in msg and "does not match config.json" in msg


def test_the_server_needs_no_writable_home(tiny_checkpoint, tmp_path):
    """As under a read-only root filesystem (the Kubernetes manifests): nothing is written at start-up or while
    serving, so a home folder that cannot even be created does no harm."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with running_server(tiny_checkpoint, env={"HOME": str(blocker / "home")}) as srv:
        r = httpx.post(f"{srv.url}/v1/generate", json={"prompt": "Hi", "max_new_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and len(r.json()["tokens"]) == 5


def test_an_unexpected_error_costs_only_its_own_request(tiny_checkpoint, caplog):
    """A bug in a route answers the 500 envelope, is logged with its traceback, and the keep-alive connection it came
    on serves the client's next request (uvicorn closes a connection whose app raised)."""
    with live_app(tiny_checkpoint) as live:

        def broken_route():
            raise RuntimeError("a bug")

        live.app.add_api_route("/v1/broken", broken_route)  # a route with a bug: no route of ours is known to have one
        with httpx.Client(base_url=live.url) as client:
            assert client.get("/health").status_code == 200
            (connection,) = live.server.server_state.connections
            assert_envelope(client.get("/v1/broken"), 500, kind="server_error")
            r = client.post("/v1/generate", json={"prompt": "ab", "max_new_tokens": 3})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
            assert live.server.server_state.connections == {connection}, "the connection was closed after the 500"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["unhandled error on GET /v1/broken"]
    assert errors[0].exc_info and "a bug" in str(errors[0].exc_info[1])
