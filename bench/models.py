"""Several models in one server: start-up time and resident memory with one model and with all of them.

Each round starts a real server (`python -m server`) with the first checkpoint alone, then one with every
checkpoint, alternately; start-up is from the process's start to the first /health 200 (imports, loading,
each engine's warm-up pass), memory is the process's RSS when idle after one greedy request per model.
The defaults are the bundled checkpoints that exist (checkpoints/shakespeare, checkpoints/multilingual); with
only one of them, a copy of it stands in as the second model.

    python -m bench.models [--checkpoint DIR ...] [--rounds 5] [--max-batch 32]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, median, rss_mb, table, write_doc
from server.process import running_server

BUNDLED = [ROOT / "checkpoints" / "shakespeare", ROOT / "checkpoints" / "multilingual"]


def measure(checkpoints: list[Path], max_batch: int) -> dict:
    extra = [arg for path in checkpoints[1:] for arg in ("--checkpoint", str(path))]
    t0 = time.perf_counter()
    with running_server(checkpoints[0], *extra, "--max-batch", str(max_batch), timeout=300) as server:
        startup = time.perf_counter() - t0
        models = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
        for model in models:
            body = {"model": model, "prompt": "ROMEO:", "max_new_tokens": 32, "temperature": 0}
            httpx.post(f"{server.url}/v1/generate", json=body, timeout=60).raise_for_status()
        return {"models": models, "startup_s": startup, "rss_mb": rss_mb(server.proc.pid)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, action="append", help="repeatable (default: the bundled ones)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-batch", type=int, default=32, help="the servers' --max-batch (KV-cache rows per model)")
    args = p.parse_args()
    checkpoints = args.checkpoint or [c for c in BUNDLED if (c / "config.json").exists()]
    with tempfile.TemporaryDirectory() as tmp:
        note = ""
        if len(checkpoints) == 1:
            copy = Path(tmp) / f"{checkpoints[0].name}-copy"
            shutil.copytree(checkpoints[0], copy)
            checkpoints.append(copy)
            note = f"The second model is a copy of `{checkpoints[0].name}` (no second checkpoint was at hand).\n"
        setups = {"one model": checkpoints[:1], "all models": checkpoints}
        results = {name: [] for name in setups}
        for _ in range(args.rounds):
            for name, chosen in setups.items():  # alternate, so both see the same machine state
                r = measure(chosen, args.max_batch)
                results[name].append(r)
                print(json.dumps({"setup": name, **r}))
    rows = [
        [
            ", ".join(f"`{m}`" for m in runs[0]["models"]),
            median([r["startup_s"] for r in runs]),
            median([r["rss_mb"] for r in runs]),
        ]
        for runs in results.values()
    ]
    # per round, all models minus one: paired, so a machine that slows down for a while cancels out
    more = [(b["startup_s"] - a["startup_s"], b["rss_mb"] - a["rss_mb"]) for a, b in zip(*results.values())]
    body = f"""
{note}Each row is the median of {args.rounds} server starts (`python -m server`, `--max-batch {args.max_batch}`,
default settings otherwise: float32 model for scoring and attention maps, generation in the native step in each
checkpoint's weight form), one setup after the other in each round. Start-up: from the process's start to the
first `/health` 200, which waits for every model's engine to have run its warm-up pass. Memory: the resident set
after one greedy 32-byte generation per model, idle.

{table(["models served", "start-up (s)", "RSS (MiB)"], rows)}

Adding the other model{"s" if len(checkpoints) > 2 else ""} costs {median([m for _, m in more]):.0f} MiB and
{median([s for s, _ in more]):+.2f} s of start-up (medians of the per-round differences; start-up is mostly
importing torch and varies by seconds with the machine's load).

Reproduce: `.venv/bin/python -m bench.models`
"""
    write_doc("models", "Several models in one server: start-up and memory", body)


if __name__ == "__main__":
    main()
