"""Start-up, cold and warm: how long a real server takes to answer, and to serve its compiled decode step.

Cold: an empty cache folder (`TINYLLM_CACHE_DIR`), so the weight forms are measured and the decode step is
compiled from nothing. Warm: the same folder again, as a restart finds it (the form choice is read back,
Inductor loads its compiled code). Rounds alternate cold and warm. For each start we record the time from
the process's start to /health 200 (it serves from then on, with the eager step) and to the compiled step
being in use (/v1/model's `decode_step.compiled`).

    python -m bench.startup [--checkpoint checkpoints/shakespeare] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import DEFAULT_CHECKPOINT, median, table, write_doc
from bench.decode import wait_compiled
from server.process import running_server


def start(checkpoint: str, cache_dir: Path) -> dict:
    env = {"TINYLLM_CACHE_DIR": str(cache_dir)}
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)  # the server derives it from its cache folder
    t0 = time.perf_counter()
    with running_server(checkpoint, "--compile", env=env, timeout=300) as srv:
        healthy = time.perf_counter() - t0
        step = wait_compiled(srv.url)
        forms = f"{step['weight_form']} (batch 1), {step['batch_weight_form']} (batches)"
        return {"healthy_s": healthy, "compiled_s": time.perf_counter() - t0, "form": forms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    runs = {"cold": [], "warm": []}
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            for kind in ("cold", "warm"):  # the warm start reuses what the cold one left
                runs[kind].append(start(args.checkpoint, Path(tmp)))
                print(f"round {r} {kind}: {runs[kind][-1]}", flush=True)
    rows = [
        [kind, median([x["healthy_s"] for x in v]), median([x["compiled_s"] for x in v])] for kind, v in runs.items()
    ]
    per_start = "; ".join(
        f"{k} " + ", ".join(f"{x['healthy_s']:.1f}/{x['compiled_s']:.1f}" for x in v) for k, v in runs.items()
    )
    body = f"""
A real `tinyllm-serve` process on `{args.checkpoint}` with `--compile` (the default), {args.rounds} rounds of a
cold start (empty cache folder) then a warm one (the same folder), medians. Weight forms served:
{runs["warm"][-1]["form"]}.

{table(["start", "to /health 200 (s)", "to the compiled decode step (s)"], rows)}

The server answers from /health 200 on, with the eager decode step; the compiled step (batch 1 and any other
batch size, two graphs, one per weight form) replaces it when ready, without a pause in serving. A warm start
still traces the model with Dynamo and loads the compiled code (about 10 s per graph on one loaded core).

Per start (s, healthy / compiled): {per_start}.

Reproduce: `.venv/bin/python -m bench.startup`
"""
    write_doc("startup-cpu", "Start-up, cold and warm (CPU)", body)


if __name__ == "__main__":
    main()
