"""Benchmark: POST /v1/attention over real HTTP against a real server process, as json and as npy.

Every request asks for all layers and heads of a text of 64, 256 and the full context (512) bytes. Each
(length, format) gets one warm-up request, then --runs timed ones (wall clock for one POST, body fully read);
the table shows the median and the fastest. A baseline in the same run asks for one map (layer 0, head 0):
the same forward pass with a tiny body, so the rest of a full request's time is its body. The server runs with
the JSON cell cap raised so the full-context JSON answer can be timed too (with the default cap it is refused
with a 400 that points to npy).
Writes docs/benchmarks/attention.md.

    python -m bench.attention [--checkpoint checkpoints/shakespeare] [--runs 7] [--lengths 64 256 512]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.common import DEFAULT_CHECKPOINT, ROOT, SHAKESPEARE_TEXT, median, table, write_doc
from model import checkpoint
from model.config import ModelConfig
from model.model import Transformer
from server.config import Settings
from server.process import running_server

SAMPLE = SHAKESPEARE_TEXT
FALLBACK = (
    "ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. "
    "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief. "
)
TARGET_S = 0.5  # the full context, all layers and heads, as npy


def sample_text(n_bytes: int) -> str:
    """n_bytes of Shakespeare (ASCII), or of a repeated passage when the data set is not here."""
    source = SAMPLE.read_text(encoding="utf-8")[:8192] if SAMPLE.exists() else FALLBACK * 64
    data = source.encode("utf-8")[:n_bytes]
    assert len(data) == n_bytes, f"the sample text is shorter than {n_bytes} bytes"
    return data.decode("utf-8")


def time_requests(client: httpx.Client, body: dict, runs: int) -> tuple[list[float], int]:
    """Seconds per request after one warm-up (whose answer is checked), and the body's size."""
    T = len(body["text"].encode("utf-8"))
    times, size = [], 0
    for i in range(runs + 1):
        t0 = time.perf_counter()
        r = client.post("/v1/attention", json=body)
        content = r.content
        elapsed = time.perf_counter() - t0
        assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
        if i == 0:
            size = len(content)
            shape = np.load(io.BytesIO(content)).shape if body["format"] == "npy" else None
            assert shape is None or shape[2:] == (T, T), shape
        else:
            times.append(elapsed)
    return times, size


def main() -> None:
    p = argparse.ArgumentParser(description="Time POST /v1/attention (json and npy) over HTTP.")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="checkpoint to serve (a random default-config model when it is absent)",
    )
    p.add_argument("--lengths", type=int, nargs="+", help="text lengths in bytes (default: 64 256 context)")
    p.add_argument("--runs", type=int, default=7, help="timed requests per cell, after one warm-up")
    args = p.parse_args()
    torch.set_grad_enabled(False)

    tmp = None
    ckpt = args.checkpoint.resolve()
    what = f"`{ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt}`"
    if not checkpoint.exists(ckpt):
        tmp = tempfile.TemporaryDirectory()
        ckpt = Path(tmp.name) / "random"
        torch.manual_seed(0)
        checkpoint.save(ckpt, Transformer(ModelConfig()).eval(), training={"note": "random weights for bench"})
        what = "a random model with the default ModelConfig() (no trained checkpoint found)"
    cfg = checkpoint.load_config(ckpt)
    lengths = args.lengths or [64, 256, cfg.context_length]
    default_cap = Settings.model_fields["attention_max_cells"].default

    load_before = os.getloadavg()[0]
    rows, full_npy = [], None
    with (
        running_server(ckpt, "--attention-max-cells", str(10**9), "--device", "cpu", timeout=120) as server,
        httpx.Client(base_url=server.url, timeout=300) as client,
    ):
        for T in lengths:
            for fmt, one_map in (("json", False), ("npy", False), ("npy", True)):
                body = {"text": sample_text(T), "format": fmt}
                if one_map:  # the baseline: the same forward pass, a body of one map
                    body.update(layers=[0], heads=[0])
                times, size = time_requests(client, body, args.runs)
                cells = T * T if one_map else cfg.n_layer * cfg.n_head * T * T
                note = (
                    "baseline: layer 0, head 0 only"
                    if one_map
                    else "over the default JSON cap"
                    if fmt == "json" and cells > default_cap
                    else ""
                )
                rows.append(
                    [
                        T,
                        fmt,
                        f"{cells:,}",
                        f"{size / 1e6:.2f} MB",
                        f"{median(times) * 1e3:.0f} ms",
                        f"{min(times) * 1e3:.0f} ms",
                        note,
                    ]
                )
                print(" | ".join(map(str, rows[-1])), flush=True)
                if cfg.context_length == T and fmt == "npy" and not one_map:
                    full_npy = median(times)
    if tmp is not None:
        tmp.cleanup()

    load_after = os.getloadavg()[0]
    verdict = (
        ""
        if full_npy is None
        else (
            f"Target: the full context ({cfg.context_length} bytes), all layers and heads, as `npy`, under "
            f"{TARGET_S} s: **{'met' if full_npy < TARGET_S else 'missed'}** ({full_npy * 1e3:.0f} ms median)."
        )
    )
    body = f"""
Model: {what}: {cfg.n_layer} layers × {cfg.n_head} heads, d_model {cfg.d_model}, context {cfg.context_length},
float32 on the CPU. Each request asks for all layers and heads; the time is one POST over HTTP to a real
`python -m server` process on 127.0.0.1 with the body fully read, median and fastest of {args.runs} after one
warm-up. The server ran with the JSON cell cap raised so large JSON answers could be timed; with the default
cap ({default_cap:,} cells) those are refused with a 400 that points to `npy`. The baseline rows, from the
same run and server, ask for one map (layer 0, head 0): the same forward pass (the model computes every
layer's maps either way) with a tiny body, so the difference is the cost of encoding and moving the body.
Load average (1 min) before and after the run:
{load_before:.2f} and {load_after:.2f}: torch's threads take every core, so another busy process slows
every row several-fold (run it on a quiet machine).

{table(["bytes (T)", "format", "cells", "body", "median", "fastest", ""], rows)}

{verdict}

Reproduce: `python -m bench.attention`.
"""
    write_doc("attention", "`POST /v1/attention`: json and npy", body)


if __name__ == "__main__":
    main()
