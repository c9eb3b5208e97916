"""Start-up: how long a real server takes from its process's start to serving the native step.

Nothing is compiled or measured at start-up (the native step is built at install time, the weight form is a
setting), so every start is alike; rounds are repeated for the median. Each start records the time to /health
200 and the step `/v1/model` then reports.

    python -m bench.startup [--checkpoint checkpoints/shakespeare] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import httpx

from bench.common import DEFAULT_CHECKPOINT, median, table, write_doc
from server.process import running_server


def start(checkpoint: str) -> dict:
    t0 = time.perf_counter()
    with running_server(checkpoint, timeout=120) as srv:
        healthy = time.perf_counter() - t0
        step = httpx.get(f"{srv.url}/v1/model").json()["decode_step"]
        return {"healthy_s": healthy, "step": step["step"], "form": step["weight_form"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    runs = []
    for r in range(args.rounds):
        runs.append(start(args.checkpoint))
        print(f"round {r}: {runs[-1]}", flush=True)
    healthy = [x["healthy_s"] for x in runs]
    body = f"""
A real `tinyllm-serve` process on `{args.checkpoint}`, default settings, {args.rounds} starts. It serves the
native step from its first answer on: `{runs[-1]["step"]}` in {runs[-1]["form"]} weights.

{table(["", "to /health 200 (s)"], [["median", median(healthy)], ["slowest", max(healthy)]])}

From the process's start: importing torch and the server, loading the checkpoint, packing the weights for the
step, and one warm-up pass of each kind.

Per start (s): {", ".join(f"{x:.1f}" for x in healthy)}.

Reproduce: `.venv/bin/python -m bench.startup`
"""
    write_doc("startup-cpu", "Start-up (CPU)", body)


if __name__ == "__main__":
    main()
