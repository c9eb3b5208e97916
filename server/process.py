"""Start `python -m server` as a child process on a free local port, for integration tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path  # its standard output and error


@contextlib.contextmanager
def running_server(
    checkpoint: Path | None, *args: str, env: dict | None = None, timeout: float = 60.0, root: Path = ROOT
) -> Iterator[Server]:
    """A live server on 127.0.0.1, healthy; stopped (SIGTERM, then SIGKILL) afterwards. root: the checkout whose
    server runs (another commit's, for a before/after benchmark).

    checkpoint None: the shipped configuration, as `make serve` and the Docker image start it: every bundled model
    with the default settings (only the address differs, and the log level is info)."""
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"tinyllm-server-{port}.log"
    cmd = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint), "--log-level", "warning"]
    cmd += args
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout}s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Server(url, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
