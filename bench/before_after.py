"""Benchmark: this checkout against an earlier commit, in the same run, on what a refactor must not slow down.

The earlier commit is checked out into a temporary git worktree, with the native step built from its own sources
where they differ from this checkout's (else this checkout's binary copied in). Each round runs one subprocess per
side, the sides alternating and the order flipping every round, and each subprocess times, in-process with one
thread:

- the plain forward pass over 512 bytes (Transformer.forward, no cache: prompt scoring's pass);
- the torch decode step (Runner(native_step=False).decode) at batch 1 and 16, and the native step's at 1 and 16;
- a traced run of 512 bytes with every layer's probabilities (model.trace.run: what the inspection routes run);
- explain of the last layer's head 0 for the last byte of a new 512-byte text (trace.run up to it, then explain);
- over HTTP, a real server (python -m server) per side: 8 concurrent greedy generations of 128 bytes, tokens/s.

Medians over rounds; the ratio is after / before (1.00 = the same speed). Writes docs/benchmarks/before-after.md.

    python -m bench.before_after --before a7a9ac1 [--rounds 5] [--text ../shared/data/tinyshakespeare.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import DEFAULT_CHECKPOINT, ROOT, SHAKESPEARE_TEXT, median, table, write_doc
from server.process import running_server

PROBE = r"""
import json, statistics, sys, time, asyncio
import torch, httpx
torch.set_num_threads(1)
from model import checkpoint
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence
from model.trace import run
from model.explain import explain
ckpt = sys.argv[1]
model = checkpoint.load_model(ckpt).eval()
text = open(sys.argv[2], "rb").read()
ids = list(text[:512])

def timed(fn, n):
    fn()
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return statistics.median(out) * 1e3

def decode_ms(native, batch):
    runner = Runner(model, max_batch=batch, form="int8" if native else "float32", native_step=native)
    seqs = [Sequence(ids[:173], 173, SamplingParams(temperature=0), seed=i) for i in range(batch)]
    return timed(lambda: runner.decode(seqs), 30)

result = {}
with torch.inference_mode():
    result["forward 512 bytes (ms)"] = timed(lambda: model(torch.tensor([ids])), 10)
for native in (False, True):
    for batch in (1, 16):
        result[f"{'native' if native else 'torch'} decode step, batch {batch} (ms)"] = decode_ms(native, batch)
last = model.config.n_layer - 1
result["trace.run 512 bytes, every layer's maps (ms)"] = timed(lambda: run(model, ids, weights_of=range(last + 1)), 5)
windows = iter(range(1, 100))
def explain_new():
    start = 600 * next(windows)
    t = run(model, list(text[start:start + 512]), blocks=last)
    explain(model, t, last, 0, 511)
result["explain, new text, last layer (ms)"] = timed(explain_new, 7)
print(json.dumps(result))
"""

SERVE = r"""
import asyncio, json, sys, time, httpx
async def main(url):
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        body = {"prompt": "ROMEO:\n", "max_new_tokens": 128, "temperature": 0}
        await c.post("/v1/generate", json=body)
        t = time.perf_counter()
        replies = await asyncio.gather(*[c.post("/v1/generate", json=body) for _ in range(8)])
        dt = time.perf_counter() - t
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    print(json.dumps({"HTTP, 8 clients x 128 bytes (tok/s)": 8 * 128 / dt}))
asyncio.run(main(sys.argv[1]))
"""


def side_run(root: Path, checkpoint: Path, text: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(checkpoint), str(text)], env=env, cwd=root, check=True, capture_output=True
    )
    result = json.loads(probe.stdout)
    # the side's own server (cwd and PYTHONPATH: its checkout) on a free port: two runs at once do not collide
    with running_server(checkpoint, "--max-batch", "8", root=root, env={"PYTHONPATH": str(root)}) as server:
        serve = subprocess.run([sys.executable, "-c", SERVE, server.url], check=True, capture_output=True, env=env)
        result.update(json.loads(serve.stdout))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the earlier commit (a revision git knows)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--text", type=Path, default=SHAKESPEARE_TEXT, help=f"what the probes read ({SHAKESPEARE_TEXT})")
    args = p.parse_args()
    if not args.text.is_file():
        p.error(f"no text at {args.text}: pass --text, or set TINYLLM_SHARED to the shared folder")
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, check=True, capture_output=True)
    before_rev = rev.stdout.decode().strip()
    after_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True).stdout.decode()
    native_sources = ["model/native/step.cpp", "model/native/kernels.h"]
    same_native = (
        subprocess.run(["git", "diff", "--quiet", before_rev, "--", *native_sources], cwd=ROOT).returncode == 0
    )
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), before_rev], cwd=ROOT, check=True)
        try:
            if same_native:  # the same C++: this checkout's binary serves both
                for so in (ROOT / "model" / "native").glob("_step*.so"):
                    shutil.copy(so, old / "model" / "native")
            else:  # the earlier C++ built for the earlier side, as its `make setup` would
                build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
                subprocess.run(build, cwd=old, check=True, env={**os.environ, "PYTHONPATH": str(old)})
            results = {"before": [], "after": []}
            for r in range(args.rounds):
                sides = [("before", old), ("after", ROOT)]
                for name, root in sides if r % 2 == 0 else sides[::-1]:
                    results[name].append(side_run(root, args.checkpoint.resolve(), args.text.resolve()))
                    print(name, results[name][-1], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    rows = []
    for key in results["after"][0]:
        b, a = median([x[key] for x in results["before"]]), median([x[key] for x in results["after"]])
        rows.append([key, b, a, a / b])
    body = f"""Before: `{before_rev}`, after: `{after_rev.strip()}`, {args.rounds} rounds, sides
alternating (`python -m bench.before_after --before {args.before} --rounds {args.rounds}`). The native step's C++ is
{"the same in both" if same_native else "different between them: each side ran its own, built from its sources"}.

{table(["measure", "before", "after", "after / before"], rows)}

Times are medians of in-process calls on one thread (ms: lower is faster); the HTTP row is tokens/s (higher is
faster). This machine is shared and noisy (±25% between runs): a ratio within that band is no change. Load
average (1, 5, 15 min) at the end: {", ".join(f"{x:.1f}" for x in os.getloadavg())}.
"""
    print(body)
    write_doc("before-after", "Before and after: the one forward pass with hook points, the step interface", body)


if __name__ == "__main__":
    main()
