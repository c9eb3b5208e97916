"""Time POST /v1/attention over real HTTP against a real server process; write docs/benchmarks/attention.md.

    .venv/bin/python bench/attention.py                      # checkpoints/shakespeare, 64/256/512 bytes
    .venv/bin/python bench/attention.py --runs 9 --out -     # print the table instead of writing it

Every request asks for all layers and all heads. Each (length, format) gets one warm-up request, then
--runs timed ones; the table shows the median and the fastest. The server is started with the JSON cell
cap raised so the full-context JSON answer can be timed too (by default the server refuses it with a 400
that points to npy). Not a test: numbers depend on the machine, which the report records.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import checkpoint  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.model import Transformer  # noqa: E402
from tests.serving import running_server  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
FALLBACK_TEXT = ("ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. "
                 "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief. ")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sample_text(n_bytes: int) -> str:
    """The first n_bytes of Shakespeare (ASCII), or a repeated sentence when the data is not here."""
    source = SAMPLE.read_text(encoding="utf-8")[:4096] if SAMPLE.exists() else FALLBACK_TEXT * 40
    data = source.encode("utf-8")[:n_bytes]
    assert len(data) == n_bytes, f"sample text is shorter than {n_bytes} bytes"
    return data.decode("utf-8")


def time_request(client: httpx.Client, url: str, body: dict, runs: int) -> tuple[list[float], int]:
    """Seconds per request (the whole body read), after one warm-up; and the body size."""
    size = 0
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        r = client.post(url, json=body)
        content = r.content
        elapsed = time.perf_counter() - t0
        assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
        if i == 0:  # warm-up; check the answer once
            size = len(content)
            if body["format"] == "npy":
                arr = np.load(io.BytesIO(content))
                T = len(body["text"].encode("utf-8"))
                assert arr.shape[2:] == (T, T), arr.shape
            continue
        times.append(elapsed)
    return times, size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "shakespeare",
                   help="checkpoint to serve (a random default-config model when absent)")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="text lengths in bytes (default 64 256 ctx)")
    p.add_argument("--runs", type=int, default=7, help="timed requests per cell, after one warm-up")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "attention.md"), help="markdown file, or -")
    args = p.parse_args(argv)

    tmp = None
    ckpt = args.checkpoint
    what = f"`{ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt}`"
    if not checkpoint.exists(ckpt):
        tmp = tempfile.TemporaryDirectory()
        ckpt = Path(tmp.name) / "random"
        torch.manual_seed(0)
        checkpoint.save(ckpt, Transformer(ModelConfig()).eval(), training={"note": "random weights for bench"})
        what = "a random model with the default ModelConfig() (no trained checkpoint found)"
    cfg = checkpoint.load_config(ckpt)
    lengths = args.lengths or [64, 256, cfg.context_length]

    rows = []
    with running_server(ckpt, "--attention-max-cells", str(10**9), "--device", "cpu", timeout=120) as server, \
            httpx.Client(base_url=server.url, timeout=300) as client:
        info = client.get("/v1/model").json()
        for T in lengths:
            text = sample_text(T)
            for fmt in ("json", "npy"):
                body = {"text": text, "layers": None, "heads": None, "format": fmt}
                times, size = time_request(client, "/v1/attention", body, args.runs)
                cells = cfg.n_layer * cfg.n_head * T * T
                rows.append((T, fmt, cells, size, statistics.median(times), min(times)))
                print(f"T={T:4d} {fmt:4s} cells={cells:>10,} size={size / 1e6:7.2f} MB "
                      f"median={statistics.median(times) * 1e3:8.1f} ms min={min(times) * 1e3:8.1f} ms", flush=True)
    if tmp is not None:
        tmp.cleanup()

    full_npy = next(r for r in rows if r[0] == cfg.context_length and r[1] == "npy")
    verdict = "meets" if full_npy[4] < 0.5 else "misses"
    lines = [
        "# `/v1/attention` benchmark",
        "",
        f"Generated by `bench/attention.py` on {time.strftime('%Y-%m-%d')}. Every request asks for all "
        f"{cfg.n_layer} layers × {cfg.n_head} heads; times are wall-clock for one POST over HTTP to a real "
        f"`python -m server` process on 127.0.0.1, body fully read; median and fastest of {args.runs} requests "
        "after one warm-up. The server ran with the JSON cell cap raised so the full-context JSON answer could be "
        f"timed; with the default cap ({4_000_000:,} cells) it is refused with a 400 that points to `npy`.",
        "",
        f"- model: {what}, {cfg.n_layer} layers, {cfg.n_head} heads, d_model {cfg.d_model}, "
        f"context {cfg.context_length}, {info['dtype']} on {info['device']}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}",
        "",
        "| bytes (T) | format | cells | body | median | fastest |",
        "|---:|:---|---:|---:|---:|---:|",
    ]
    for T, fmt, cells, size, med, best in rows:
        lines.append(f"| {T} | {fmt} | {cells:,} | {size / 1e6:.2f} MB | {med * 1e3:.0f} ms | {best * 1e3:.0f} ms |")
    lines += ["", f"Target: the full context ({cfg.context_length} bytes), all layers and heads, as `npy`, under "
              f"0.5 s: this run **{verdict}** it ({full_npy[4] * 1e3:.0f} ms median).", ""]
    report = "\n".join(lines)
    if args.out == "-":
        print(report)
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
