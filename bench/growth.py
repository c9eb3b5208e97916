"""Benchmark 3: how cost grows with context. Per-token decode time as the context fills, with the KV cache
and with a no-cache recompute of the whole sequence; and prefill time against prompt length.

    python -m bench.growth [--checkpoint checkpoints/shakespeare] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import DEFAULT_CHECKPOINT, median_time, plot, table, write_doc
from model import checkpoint, form_quality
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = checkpoint.load_model(args.checkpoint, device=device, dtype=dtype)
    form = form_quality.default_form(args.checkpoint)[0] if device.type == "cpu" else "float32"
    runner = Runner(model, form=form)  # as the server generates
    ctx = model.config.context_length
    ids = torch.randint(32, 127, (1, ctx), device=device)
    lengths = [n for n in (16, 32, 64, 128, 192, 256, 320, 384, 448, ctx - 1) if n < ctx]
    greedy = SamplingParams(temperature=0)

    def prefill(n):  # the prompt's n bytes into the cache, and the first token chosen
        return lambda: runner.prefill(Sequence(ids[0, :n].tolist(), n, greedy), row=0, start=0, end=n)

    def cached_step(n):  # one token at position n after a prefill of n
        seq = Sequence(ids[0, : n + 1].tolist(), n + 1, greedy)
        return lambda: runner.decode([seq])

    def recompute(n):  # what a server without a KV cache does per token: the whole sequence again
        return lambda: model(ids[:, : n + 1])

    prefill(16)(), cached_step(16)(), recompute(16)()  # warm-up
    rows = []
    for n in lengths:
        t_prefill = median_time(prefill(n), device)
        t_cached = median_time(cached_step(n), device, repeats=15)
        t_recompute = median_time(recompute(n), device)
        rows.append([n, t_cached * 1e3, t_recompute * 1e3, t_recompute / t_cached, t_prefill * 1e3])
        print(rows[-1])
    xs = [r[0] for r in rows]
    decode_png = plot(
        f"growth-decode-{device.type}",
        lambda ax: (
            ax.plot(xs, [r[1] for r in rows], "o-", label="KV cache"),
            ax.plot(xs, [r[2] for r in rows], "o-", label="no cache (recompute)"),
            ax.set_xlabel("context length (bytes)"),
            ax.set_ylabel("ms per generated token"),
            ax.legend(),
        ),
    )
    prefill_png = plot(
        f"growth-prefill-{device.type}",
        lambda ax: (
            ax.plot(xs, [r[4] for r in rows], "o-"),
            ax.set_xlabel("prompt length (bytes)"),
            ax.set_ylabel("prefill time (ms)"),
        ),
    )
    body = f"""
`{args.checkpoint}`, {str(dtype).removeprefix("torch.")} on {device}, batch 1, medians of repeated runs; cached steps
and prefill as the server generates: `{runner.describe()["step"]}` in {form} weights. The cached step feeds one token at
position *n* against a cache holding *n* positions; the recompute runs the whole sequence of *n + 1* bytes in
the torch model (float32), as a server without a KV cache must for every token.

{table(["context", "cached ms/token", "recompute ms/token", "recompute ÷ cached", "prefill ms"], rows)}

![decode cost]({decode_png}) ![prefill cost]({prefill_png})

Reproduce: `.venv/bin/python -m bench.growth --device {device.type}`
"""
    write_doc(f"growth-{device.type}", f"Cost growth with context ({device.type})", body)


if __name__ == "__main__":
    main()
