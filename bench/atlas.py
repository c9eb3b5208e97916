"""Benchmark: the work across text (issue 30) on the Shakespeare model.

1. The atlas over the held-out split (the last 10% of tinyshakespeare, 111,540 bytes): model.atlas.compute, timed
   in-process, with the load average before and after (the machine is shared: the time is only comparable with
   the load beside it). --atlas-runs 0 skips it and reads the time the atlas file records instead.
2. An atlas answer over HTTP: GET /v1/atlas for one pair in one head (with examples), the same pair across heads,
   and one head's grouped map, against a real server process; medians of --runs after one warm-up (the first
   request loads the atlas file and is reported on its own).
3. Activation patching at 128 bytes (every layer × position and every head): model.patching.patch in-process, the
   median of --runs, and once over HTTP (POST /v1/patch).

Writes docs/benchmarks/atlas.md.

    python -m bench.atlas [--checkpoint checkpoints/shakespeare] [--runs 5] [--atlas-runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx
import torch

from bench.common import DEFAULT_CHECKPOINT, median, table, write_doc
from model import atlas, checkpoint
from model.atlas_cli import held_out
from model.patching import patch
from server.process import running_server

CLEAN = b"ROMEO: I will go to the orchard wall. JULIET: Where is my Romeo? NURSE: He is gone. JULIET: Then call ROMEO"
CORRUPT = CLEAN.replace(b"ROMEO:", b"TYBLT:").replace(b"my Romeo", b"my Tybal")


def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def texts_128() -> tuple[bytes, bytes]:
    clean, corrupt = (CLEAN * 2)[-128:], (CORRUPT * 2)[-128:]
    assert len(clean) == len(corrupt) == 128
    return clean, corrupt


def time_atlas(folder, runs: int) -> list[list]:
    if runs == 0:
        return []
    model = checkpoint.load_model(folder).eval()
    corpus = held_out(folder)
    rows = []
    for _ in range(runs):
        before = load()
        t0 = time.perf_counter()
        atlas.compute(model, corpus, progress=False)
        rows.append([f"{corpus.data.size:,}", f"{time.perf_counter() - t0:.1f}", before, load()])
    return rows


def time_http(folder, runs: int) -> list[list]:
    asks = {
        "one head, H → i, with examples": "/v1/atlas?layer=0&head=0&query=H&key=i",
        "every head, H → i": "/v1/atlas?query=H&key=i",
        "one head's top pairs": "/v1/atlas?layer=2&head=3",
        "one head's grouped map": "/v1/atlas/map?layer=2&head=3",
    }
    rows = []
    with running_server(folder, "--device", "cpu", timeout=120) as server, httpx.Client(base_url=server.url) as c:
        t0 = time.perf_counter()
        assert c.get("/v1/atlas?layer=0&head=0&query=H&key=i").status_code == 200
        rows.append(["first request (loads the atlas file)", f"{(time.perf_counter() - t0) * 1e3:.1f}", ""])
        for name, path in asks.items():
            times = []
            for _ in range(runs + 1):
                t0 = time.perf_counter()
                r = c.get(path)
                times.append((time.perf_counter() - t0) * 1e3)
                assert r.status_code == 200, r.text
            rows.append([name, f"{median(times[1:]):.1f}", f"{len(r.content):,}"])
        clean, corrupt = texts_128()
        t0 = time.perf_counter()
        r = c.post("/v1/patch", json={"clean": clean.decode(), "corrupt": corrupt.decode()}, timeout=300)
        assert r.status_code == 200, r.text
        rows.append(
            ["POST /v1/patch at 128 bytes (once)", f"{(time.perf_counter() - t0) * 1e3:.0f}", f"{len(r.content):,}"]
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--atlas-runs", type=int, default=1)
    args = p.parse_args()
    folder = Path(args.checkpoint)
    threads = torch.get_num_threads()
    atlas_rows = time_atlas(folder, args.atlas_runs)
    record = json.loads((checkpoint.resolve(folder) / atlas.ATLAS_JSON).read_text())
    model = checkpoint.load_model(folder).eval()
    clean, corrupt = texts_128()
    patch_times = []
    for _ in range(args.runs):
        before = load()
        t0 = time.perf_counter()
        out = patch(model, list(clean), list(corrupt))
        patch_times.append(time.perf_counter() - t0)
    http_rows = time_http(folder, args.runs)
    body = (
        f"""
The machine is shared with other work: the load average (1 / 5 / 15 min) is recorded beside each time; with 2 cores,
a load of 2 is a machine to itself. torch threads: {threads}.

## The atlas over the held-out split

| bytes | seconds | load before | load after |
|---|---|---|---|
"""
        + "\n".join("| " + " | ".join(r) + " |" for r in atlas_rows)
        + f"""

The atlas file in the checkpoint records {record["seconds"]} s for its own run (`tinyllm-atlas`, {record["bytes"]:,}
bytes, {record["windows"]} windows). Target: under 2 minutes on an idle 2-core machine.

## An atlas answer over HTTP (median of {args.runs}, milliseconds)

{table(["request", "ms", "bytes"], http_rows)}

Target: < 50 ms.

## Activation patching at 128 bytes, in-process

Every layer × position of the residual stream and every head ({model.config.n_layer} × 128 + {model.config.n_layer}
× {model.config.n_head} patched runs, batched per layer): median {median(patch_times):.2f} s of {args.runs}
(all: {", ".join(f"{t:.2f}" for t in patch_times)}), load before the last {before}. Target: < 2 s.
Target byte {out.target} ({chr(out.target)!r}), logit difference clean {out.clean_logit_diff:.2f}, corrupt
{out.corrupt_logit_diff:.2f}.
"""
    )
    write_doc("atlas", "Across text: the atlas, its answers over HTTP, activation patching", body)


if __name__ == "__main__":
    main()
