"""Benchmark: the native step's int8 multiply-add rate against this CPU's measured peak, and where the rest of a
step's time goes, at batch 1, 16 and 64; a 512-byte prefill; one against two step threads.

- The peak: the kernels' dot-product instruction sequence on data in L1, one thread (model/native/kernels.h:
  int8_peak_avx2 or int8_peak_vnni, through the extension's int8_peak).
- The matrix products alone: q8_matmul on the step's matrices (the checkpoint's, quantized as the step
  quantizes them) with batch-many entries, as the step multiplies.
- The step: NativeStep.forward for a batch at position 173, and at position 0 (attention over one key): the
  products' time, attention (173 minus 0) and the rest (position 0 minus the products: norms, RoPE, SwiGLU,
  quantizing activations, copies).

Single-thread times are the calling thread's CPU time (time.thread_time, and the extension's own clock), which
other work on a shared machine does not inflate as it does wall time; the thread comparison needs wall time, so it
alternates one and two threads round after round and records the load.

    python -m bench.kernel [--checkpoint checkpoints/shakespeare] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench.common import DEFAULT_CHECKPOINT, median, table, write_doc
from model import checkpoint
from model.kv_cache import KVCache
from model.native import step as native
from model.native.step import NativeStep, step_matrices
from model.quantize import int8_group, quantize_groups

BATCHES = (1, 16, 64)
POSITION = 173  # as bench.decode's step profile


def step_shapes(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The step's int8 matrices and scales, as NativeStep builds them."""
    group = int8_group(model.config)
    out = []
    for matrix in step_matrices(model):
        q, scale = quantize_groups(matrix, group)
        out.append((q.flatten(-2).to(torch.int8).contiguous(), scale.squeeze(-1).contiguous()))
    return out


def macs_per_token(model) -> int:
    """int8 multiply-adds of one entry through every matrix (the unembedding too: every decoded entry has logits)."""
    return sum(m.shape[0] * m.shape[1] for m in step_matrices(model))


def products_seconds(mats, group: int, batch: int, kernels: str) -> float:
    """One step's matrix products for `batch` entries: the sum of each matrix's (thread CPU) time."""
    total = 0.0
    for q, scale in mats:
        x = torch.randn(batch, q.shape[1])
        total += native._step.q8_matmul(x, q, scale, group, kernels, repeats=9)[1]
    return total


@torch.inference_mode()
def step_seconds(step: NativeStep, batch: int, position: int, calls: int = 9, clock=time.thread_time) -> float:
    cache = KVCache(step.config, batch, torch.float32, "cpu", max_len=position + 1)
    tokens, rows, positions = torch.full((batch,), 65), torch.arange(batch), torch.full((batch,), position)
    times = []
    for _ in range(calls + 1):
        t = clock()
        step.forward(tokens, rows, positions, cache, logits_for=rows)
        times.append(clock() - t)
    return statistics.median(times[1:])


@torch.inference_mode()
def prefill_seconds(step: NativeStep, length: int = 512, chunk: int = 128) -> float:
    """A `length`-byte prompt in chunks of `chunk` entries (the server's prefill_chunk), logits of the last."""
    cache = KVCache(step.config, 1, torch.float32, "cpu", max_len=length)
    ids = torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(0))
    t = time.thread_time()
    for s in range(0, length, chunk):
        e = min(length, s + chunk)
        step.forward(ids[s:e], torch.zeros(e - s, dtype=torch.long), torch.arange(s, e), cache,
                     logits_for=torch.tensor([e - s - 1]))  # fmt: skip
    return time.thread_time() - t


def profile(step: NativeStep, model, rounds: int) -> dict:
    """Medians over rounds: the peak, and per batch the products, the step at 0 and at POSITION, and prefill."""
    torch.set_num_threads(1)
    group, kernels, mats = int8_group(model.config), step.kernels, step_shapes(model)
    samples = {"peak": [], "prefill": []}
    for _ in range(rounds):
        samples["peak"].append(native._step.int8_peak(kernels, 0.3))
        for b in BATCHES:
            samples.setdefault(("products", b), []).append(products_seconds(mats, group, b, kernels))
            samples.setdefault(("at0", b), []).append(step_seconds(step, b, 0))
            samples.setdefault(("step", b), []).append(step_seconds(step, b, POSITION))
        samples["prefill"].append(prefill_seconds(step))
    return {k: median(v) for k, v in samples.items()}


def threads_compared(step: NativeStep, rounds: int) -> dict:
    """Wall time of a step at POSITION with one and with two threads, alternating, medians."""
    out = {}
    for r in range(rounds):
        for threads in (1, 2) if r % 2 == 0 else (2, 1):
            torch.set_num_threads(threads)
            for b in BATCHES:
                out.setdefault((threads, b), []).append(step_seconds(step, b, POSITION, 5, time.perf_counter))
    torch.set_num_threads(1)
    return {k: median(v) for k, v in out.items()}


def rate_rows(p: dict, macs: int) -> list[list]:
    peak = p["peak"]
    rows = []
    for b in BATCHES:
        step, products, at0 = p["step", b], p["products", b], p["at0", b]
        rate = macs * b / step
        rows.append([
            b, step * 1e3, b / step, rate / 1e9, f"{100 * rate / peak:.0f}%", macs * b / products / 1e9,
            f"{100 * macs * b / products / peak:.0f}%", f"{100 * products / step:.0f}%",
            f"{100 * max(0.0, step - at0) / step:.0f}%", f"{100 * max(0.0, at0 - products) / step:.0f}%",
        ])  # fmt: skip
    return rows


RATE_HEADERS = [
    "batch", "step ms", "tokens/s", "step GMAC/s", "of peak", "products GMAC/s", "of peak",
    "products", "attention", "rest",
]  # fmt: skip


def kv_bytes(config, batch: int) -> int:
    """The float32 keys and values a step at POSITION reads: every layer and head of every entry."""
    return batch * config.n_layer * config.n_head * 2 * (POSITION + 1) * config.head_dim * 4


def section(p: dict, macs: int, kernels: str, config) -> str:
    """The decode doc's section: the rates against the peak, and where the rest goes."""
    kv = ", ".join(f"{kv_bytes(config, b) / 1e6:.1f} MB at batch {b}" for b in BATCHES)
    return f"""One thread, the {kernels} kernels. The peak: this CPU's int8 dot-product instruction sequence on data in
L1 (kernels.h's `int8_peak_{kernels}`), **{p["peak"] / 1e9:.1f} G multiply-adds/s**. A token is {macs / 1e6:.2f} M
int8 multiply-adds (every matrix, the unembedding included). The step at position {POSITION}; "products" are its
matrix products alone (`q8_matmul` on the same matrices and batch); "attention" is the step at position {POSITION}
minus the step at position 0; "rest" is the step at position 0 minus the products (norms, RoPE, SwiGLU's exp,
quantizing activations, copies); the three shares are of the step at {POSITION}. Times are thread CPU time.

{table(RATE_HEADERS, rate_rows(p, macs))}

Attention reads the cached keys and values in float32 ({kv}): beyond the last-level cache from batch 16
on, so it runs at memory speed there, while each weight row is read once for the whole batch.

A 512-byte prompt in chunks of 128 (the server's prefill chunk): {p["prefill"] * 1e3:.0f} ms,
**{512 / p["prefill"]:,.0f} bytes/s** (one thread)."""


def threads_section(t: dict, rounds: int) -> str:
    rows = [[b, t[1, b] * 1e3, t[2, b] * 1e3, t[1, b] / t[2, b]] for b in BATCHES]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"""Wall time of one step at position {POSITION}, medians of {rounds} alternating rounds of 5 calls:

{table(["batch", "1 thread ms", "2 threads ms", "speed-up"], rows)}

Load average (1, 5, 15 min) at the end: {load} on {len(os.sched_getaffinity(0))} cores. A step has some 31
parallel regions, and each waits for its slowest thread: where another process holds the second core, a second
step thread costs a scheduler time slice per region, and the step slows by up to hundreds of times; only with a
core free for each step thread (and one for the event loop that speaks HTTP) does the second thread pay."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    model = checkpoint.load_model(args.checkpoint).eval()
    step = NativeStep(model, "int8")
    measured = profile(step, model, args.rounds)
    threads = threads_compared(step, args.rounds)
    body = f"""
## The int8 rate against this CPU's peak

{section(measured, macs_per_token(model), step.kernels, model.config)}

## One or two step threads

{threads_section(threads, args.rounds)}

Reproduce: `.venv/bin/python -m bench.kernel`
"""
    print(body)
    write_doc("kernel-cpu", "The native step's int8 rate and threads (CPU)", body)


if __name__ == "__main__":
    main()
