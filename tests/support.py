"""Plain helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from model.config import ModelConfig
from model.model import Transformer
from model.native import step as native
from server.process import ROOT

TINY_CONFIG = ModelConfig(context_length=64, n_layer=2, n_head=2, d_model=32, mlp_hidden=64)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A random tiny model in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY_CONFIG.to_dict(), **overrides})
    return Transformer(cfg).eval()


def sharp_model(seed: int = 0) -> Transformer:
    """A tiny random model whose attention is far from uniform (at init it is nearly uniform, which would
    hide mistakes in masks, positions and the cache): queries and keys scaled up tenfold."""
    model = tiny_model(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(10)
            layer.self_attn.k_proj.weight.mul_(10)
    return model


FLOAT32_UNIT_ROUNDOFF = 2.0**-24  # u: a float32 rounding moves a value by at most this fraction of it


def float32_bound(terms: torch.Tensor, depth: int, dim=-1, computations: int = 2) -> torch.Tensor:
    """How far apart `computations` float32 computations of the same sums, from the same float32 inputs, may land
    when torch adds the terms in different orders: another matrix shape, thread count or batch size makes its CPU
    kernels block and vectorise the sum differently, and nothing in torch fixes the order per row.

    In any order, a float32 result whose every term went through at most `depth` roundings (a dot product of n
    terms: n, its products and n - 1 additions) is within γ_depth·Σ|terms| of the exact sum, γ_n = n·u/(1 - n·u)
    (Higham, Accuracy and Stability of Numerical Algorithms, §3.1, Lemma 3.3 for chains of them), so two
    computations are within 2·γ_depth·Σ|terms| of each other. terms: the exact products (float64 from the float32
    inputs), summed over `dim`; the answer is one bound per sum."""
    n_u = depth * FLOAT32_UNIT_ROUNDOFF
    assert n_u < 1, f"a chain of {depth} roundings bounds nothing in float32"
    return computations * n_u / (1 - n_u) * terms.double().abs().sum(dim)


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def wait_healthy(client, timeout: float = 30.0) -> None:
    """/health is 503 until the engine's warm-up forward pass has run."""
    deadline = time.monotonic() + timeout
    while (r := client.get("/health")).status_code != 200:
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded", r.text
        assert time.monotonic() < deadline, "server never became healthy"
        time.sleep(0.05)


def assert_envelope(r, status: int, param: str | None = None, openai: bool = False, kind: str | None = None) -> dict:
    """The response is an error in the one envelope (with OpenAI's `code` on OpenAI paths), naming `param`."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param"} | ({"code"} if openai else set()), error
    assert error["message"] and error["param"] == param, error
    assert kind is None or error["type"] == kind, error
    assert "Traceback" not in r.text and 'File "' not in r.text
    return error


def sse_events(lines) -> list[dict]:
    """The JSON payloads of server-sent-event lines, without the closing [DONE]."""
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]


def require_native() -> None:
    """For a test that needs the native step: skip it when the step is not built (or its binary is stale), but
    under TINYLLM_REQUIRE_NATIVE=1 (CI, .ci/run) fail it, so a failed build cannot pass as green."""
    if native.UNAVAILABLE is None:
        return
    if os.environ.get("TINYLLM_REQUIRE_NATIVE") == "1":
        pytest.fail(f"TINYLLM_REQUIRE_NATIVE=1, but {native.UNAVAILABLE}", pytrace=False)
    pytest.skip(native.UNAVAILABLE)


def start_fails(checkpoint, *args: str) -> str:
    """Start the server on `checkpoint` (and args), expecting it to fail at once: its one-line error."""
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--checkpoint", str(checkpoint), "--port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of a metric on /metrics: its labels and its value (metric() reads the first alone)."""
    text = httpx.get(f"{url}/metrics").text
    found = re.finditer(rf"^{name}(?:{{([^}}]*)}})? ([0-9.e+-]+|NaN|[+-]Inf)$", text, re.M)
    return [(dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")), float(m.group(2))) for m in found]


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS in /proc), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    name = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return name.group(1).strip() if name else platform.processor() or platform.machine()
