"""A live server whose engine the test holds: uvicorn serving the app on a free local port, in a thread of the test's
process, so that a test that races generation against a client or a signal decides who wins.

A test that assumes tokens take time (that a disconnect, a cancellation or a shutdown lands before the generation
ends) passes on a slow machine and fails on a fast one. Here the test holds the engine's decode steps with a
StepGate, makes its move (closes the connection, sends SIGTERM's handler), waits for the server's own sign that the
move landed, then lets the steps go. The model, the engine, uvicorn and HTTP are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI

from server.__main__ import GracefulServer
from server.app import create_app
from server.config import Settings
from server.engine import Engine
from server.process import free_port


class StepGate:
    """Holds the engine after each loop that produced tokens (streamed, or kept for a whole response), once it has
    handed them out: the engine's thread waits there for a permit. allow(n) lets n such loops through, pace(s) one
    every s seconds, open() all; take_in(n) steps it a loop at a time until n sequences are decoding.

    A loop runs a prompt's prefill (its first token) and a decode step for every active sequence (the next), so a
    stream held from the start has received exactly two tokens, and the engine drops what was cancelled or timed
    out meanwhile before it computes another."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.is_open = False
        self.waiting = False  # the engine is stopped at the gate now
        self._permits = 0
        self._changed = threading.Condition()
        self._pacer: threading.Thread | None = None
        seen = engine.tokens_generated
        deliver = engine._deliver

        def deliver_then_wait():
            nonlocal seen
            # tokens_generated, not the outbox: a response that does not stream gets its tokens only at its end
            produced, seen = engine.tokens_generated != seen, engine.tokens_generated
            deliver()
            if produced:
                self._wait()

        engine._deliver = deliver_then_wait

    def _wait(self) -> None:
        with self._changed:
            if self.is_open:
                return
            self.waiting = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.is_open or self._permits > 0)
            if not self.is_open:
                self._permits -= 1
            self.waiting = False
            self._changed.notify_all()

    def allow(self, n: int = 1) -> None:
        with self._changed:
            self._permits += n
            self._changed.notify_all()

    def pace(self, seconds: float) -> None:
        """A loop every `seconds` at most, until open(): permits the engine has not used do not pile up."""

        def run():
            while not self.is_open:
                with self._changed:
                    self._permits = max(self._permits, 1)
                    self._changed.notify_all()
                time.sleep(seconds)

        self._pacer = threading.Thread(target=run, daemon=True)
        self._pacer.start()

    def open(self) -> None:
        with self._changed:
            self.is_open = True
            self._changed.notify_all()

    def take_in(self, n: int, timeout: float = 30.0) -> None:
        """Step the engine, a loop at a time and only while requests wait for it, until n sequences are decoding;
        it is left stopped at the gate. The sequences already decoding get a token per loop meanwhile."""
        engine = self.engine
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                stopped = self.waiting and self._permits == 0  # the engine's state holds still
                if stopped and len(engine.active) >= n:
                    return
                assert time.monotonic() < deadline, f"timed out waiting for {n} sequences to be decoding"
                if stopped and (engine.waiting or engine.prefilling is not None):
                    self._permits = 1
                    self._changed.notify_all()
                self._changed.wait(timeout=0.01)


@dataclass
class LiveApp:
    url: str
    app: FastAPI
    server: GracefulServer
    thread: threading.Thread  # uvicorn's: it ends when the server has shut down
    gates: list[StepGate] = field(default_factory=list)

    def engine(self, model: str | None = None) -> Engine:
        return self.app.state.models.get(model).engine

    def gate(self, model: str | None = None) -> StepGate:
        """A gate on the model's engine (the default model's), closed: no decode step runs until the test says."""
        self.gates.append(StepGate(self.engine(model)))
        return self.gates[-1]

    def sigterm(self) -> None:
        """What SIGTERM does to `tinyllm-serve`: its handler, GracefulServer.handle_exit."""
        self.server.handle_exit(signal.SIGTERM, None)

    def accepting(self) -> bool:
        """Whether uvicorn still listens: it closes its sockets first thing on shutdown, before the grace period."""
        return any(s.is_serving() for s in self.server.servers)

    def connections(self) -> set:
        """uvicorn's open connections (its protocol objects: .transport, .flow)."""
        return set(self.server.server_state.connections)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll condition until it holds; fail naming `what` after timeout seconds (a hang, never a speed assumption)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """wait_for inside a test's event loop, which goes on serving its clients meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def live_app(checkpoint: Path, **settings) -> Iterator[LiveApp]:
    """The app on `checkpoint` served by uvicorn on 127.0.0.1 in a thread, healthy; shut down afterwards."""
    settings = Settings(
        _env_file=None,
        checkpoint=checkpoint,
        host="127.0.0.1",
        port=free_port(),
        device="cpu",
        api_key=None,
        log_level="warning",
        **settings,
    )
    app = create_app(settings)
    server = GracefulServer(app, settings)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    live = LiveApp(f"http://{settings.host}:{settings.port}", app, server, thread)
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        assert thread.is_alive(), "uvicorn stopped during its start"
        wait_for(lambda: httpx.get(f"{live.url}/health").status_code == 200, "/health to answer 200")
        yield live
    finally:
        for gate in live.gates:
            gate.open()  # the engine's thread must be free to stop
        server.should_exit = True
        thread.join(timeout=30)
