"""Graceful shutdown: SIGTERM stops the server accepting at once, lets a stream in flight finish within the grace
period and ends one still open at its end cleanly (an error event, then [DONE]); then the process exits 0.

The stream's race against the signal is decided in the app served in a thread (tests/live.py), whose engine the test
holds or paces; the exit status needs the real process.
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from live import live_app, wait_for
from server.process import running_server
from support import sse_events

LONG = 2000  # tokens: at a loop every 20 ms, 40 s of decoding, far past a grace period of 1 s


def test_sigterm_lets_the_stream_in_flight_finish(long_checkpoint):
    """SIGTERM's handler runs while a stream is held two tokens in: the server stops accepting at once, and the
    stream, let go only then, still gets every token."""
    with live_app(long_checkpoint, shutdown_grace=30) as live:
        gate = live.gate()
        body = {"prompt": "t", "max_new_tokens": 300, "temperature": 0, "stream": True, "utf8": "any"}
        with httpx.stream("POST", f"{live.url}/v1/generate", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            live.sigterm()
            wait_for(lambda: not live.accepting(), "the server to stop accepting")
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{live.url}/health", timeout=2)
            assert live.engine().active_count == 1, "the stream was not in flight at SIGTERM"
            gate.open()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert sse_events(rest)[-1]["usage"]["completion_tokens"] == 300
        live.thread.join(timeout=30)
        assert not live.thread.is_alive(), "the server did not stop once the stream had finished"


def test_sigterm_with_a_stream_open_exits_0(long_checkpoint):
    """The process's side of the test above: after SIGTERM the stream ends whole and `python -m server` exits with
    status 0 (whether the stream was still running when the signal came does not change either)."""
    with running_server(long_checkpoint, "--shutdown-grace", "30") as srv:
        body = {"prompt": "t", "max_new_tokens": 300, "temperature": 0, "stream": True, "utf8": "any"}
        with httpx.stream("POST", f"{srv.url}/v1/generate", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            srv.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert sse_events(rest)[-1]["usage"]["completion_tokens"] == 300
        assert srv.proc.wait(timeout=30) == 0


def test_sigterm_past_the_grace_period_ends_the_stream_cleanly(long_checkpoint):
    """A stream still open near the end of the grace period ends with an error event and [DONE], not cut mid-event.
    The test paces the engine (a step every 20 ms), so the stream cannot finish within the grace period on any
    machine; the process's exit status after SIGTERM is the test above's."""
    with live_app(long_checkpoint, shutdown_grace=1.0) as live:
        gate = live.gate()
        body = {"prompt": "t", "max_new_tokens": LONG, "temperature": 0, "stream": True, "utf8": "any"}
        with httpx.stream("POST", f"{live.url}/v1/generate", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            gate.pace(0.02)  # LONG tokens take 40 s
            t0 = time.monotonic()
            live.sigterm()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        last = sse_events(rest)[-1]
        assert last["error"]["type"] == "overloaded" and "shutting down" in last["error"]["message"]
        assert len(rest) < LONG // 2, "the stream ran on instead of ending at the grace period"
        live.thread.join(timeout=30)
        assert not live.thread.is_alive() and time.monotonic() - t0 < 10, "the server waited for the stream"
