"""Benchmark 1: batch-1 greedy decode speed — TinyLLM over HTTP, TinyLLM in-process, Hugging Face
transformers' LlamaForCausalLM.generate and llama.cpp (bench.peers: the GGUF export in Q8_0 and F32) on the same
weights, in alternating rounds (medians compared).

TinyLLM runs as it serves by default: the native step in the checkpoint's default weight form (int8), batch-
invariant. Over HTTP it is a real `tinyllm-serve` process (one non-streamed POST /v1/generate per round, timed by
the client); in-process it is a runner in the same form driven by model.generate. The profile sets one step
against the memory-bandwidth floor (the step's weight bytes per token over this machine's measured bandwidth)
and measures what the UTF-8 mask costs a step, at batch 1 and 16.

    python -m bench.decode [--checkpoint checkpoints/shakespeare] [--tokens 256] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import httpx
import torch

from bench.common import DEFAULT_CHECKPOINT, PROMPT, HuggingFace, copy_bandwidth, median, table, write_doc
from bench.kernel import macs_per_token, profile, section
from bench.peers import LlamaCpp
from bench.step_overhead import outside_ms
from model import checkpoint, form_quality
from model.generate import generate
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence
from server.process import running_server

GREEDY = SamplingParams(temperature=0)


def in_process(runner: Runner, n: int) -> tuple[float, list[int]]:
    t = time.perf_counter()
    out = [s.token for s in generate(runner, list(PROMPT), n, GREEDY)]
    return len(out) / (time.perf_counter() - t), out


ENGINE_RATES: list[float] = []  # what the server's own timing says of each request over HTTP


def over_http(client: httpx.Client, n: int) -> tuple[float, list[int]]:
    """One request on a kept-alive connection, as an HTTP client library keeps one (a new client per request
    costs httpx some 30 ms of its own set-up, which is not the server's)."""
    body = {"prompt": PROMPT.decode(), "max_new_tokens": n, "temperature": 0}
    t = time.perf_counter()
    r = client.post("/v1/generate", json=body)
    elapsed = time.perf_counter() - t
    r.raise_for_status()
    out = r.json()
    tokens = [tok["id"] for tok in out["tokens"]]
    ENGINE_RATES.append(len(tokens) / ((out["timing"]["prefill_ms"] + out["timing"]["decode_ms"]) / 1e3))
    return len(tokens) / elapsed, tokens


def sequences(batch: int, valid_utf8: bool) -> list[Sequence]:
    params = SamplingParams(temperature=0.8, valid_utf8=valid_utf8)
    return [Sequence(list(PROMPT) * 3, 150, params, seed=i, max_length=512) for i in range(batch)]


@torch.inference_mode()
def step_ms(runner: Runner, batch: int, steps: int = 40) -> tuple[float, float]:
    """Median times (ms) of runner.decode for `batch` sequences at position 173 (the step and the sampling), and
    of its step call alone (runner.step.decode: the native step's one call) on the same entries, alternating."""
    seqs = sequences(batch, valid_utf8=True)
    positions = torch.full((batch,), 173)
    tokens = torch.tensor([s.tokens[-1] for s in seqs])
    decode, native = [], []
    for _ in range(steps):
        t = time.perf_counter()
        runner.decode(seqs)
        decode.append(time.perf_counter() - t)
        t = time.perf_counter()
        runner.step.decode(tokens, positions, runner.cache, [])
        native.append(time.perf_counter() - t)
    return statistics.median(decode) * 1e3, statistics.median(native) * 1e3


@torch.inference_mode()
def choose_ms(runner: Runner, batch: int, valid_utf8: bool, calls: int = 200) -> float:
    """Median time (ms) of what follows the step (runner._choose: log-probabilities, the mask, sampling) on
    fixed logits: the only part the mask changes."""
    seqs, logits = sequences(batch, valid_utf8), torch.randn(batch, 256)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        runner._choose(seqs, logits, [None] * batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads of the server and of TinyLLM in-process (0: the server's default)",
    )
    args = p.parse_args()
    hf_threads = torch.get_num_threads()  # HF runs with torch's default: one thread per core
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) - 1)  # as tinyllm-serve chooses
    torch.set_num_threads(threads)

    model = checkpoint.load_model(args.checkpoint)
    form, why = form_quality.default_form(args.checkpoint)
    runner = Runner(model, max_batch=16, form=form)
    exact = Runner(model, form="float32")
    reference = [s.token for s in generate(Runner(model, native_step=False), list(PROMPT), args.tokens, GREEDY)]
    hf = HuggingFace(args.checkpoint)
    llama = {t: LlamaCpp(args.checkpoint, t, threads) for t in ("q8_0", "f32")}  # the same weights in llama.cpp

    def hf_generate(n: int) -> tuple[float, list[int]]:
        torch.set_num_threads(hf_threads)
        try:
            return hf.generate(PROMPT, n)
        finally:
            torch.set_num_threads(threads)

    with (
        running_server(args.checkpoint, "--threads", str(threads), "--max-batch", "16", timeout=120) as srv,
        httpx.Client(base_url=srv.url, timeout=600) as client,
    ):
        served = client.get("/v1/model").json()
        for warm in (in_process(runner, 16), over_http(client, 16), hf_generate(16), in_process(exact, 16)):
            del warm
        for peer in llama.values():
            peer.generate(PROMPT, 16)
        rates = {"http": [], "in-process": [], "float32": [], "hf": [], "llama.cpp q8_0": [], "llama.cpp f32": []}
        outputs = {}
        runs = [
            ("http", lambda: over_http(client, args.tokens)),
            ("in-process", lambda: in_process(runner, args.tokens)),
            ("float32", lambda: in_process(exact, args.tokens)),
            ("hf", lambda: hf_generate(args.tokens)),
            ("llama.cpp q8_0", lambda: llama["q8_0"].generate(PROMPT, args.tokens)),
            ("llama.cpp f32", lambda: llama["f32"].generate(PROMPT, args.tokens)),
        ]
        for r in range(args.rounds):  # alternate, each round in another order: all see the same machine states
            for name, run in runs[r % len(runs) :] + runs[: r % len(runs)]:
                rate, outputs[name] = run()
                rates[name].append(rate)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rates.items()), flush=True)

    # the step alone, and what the UTF-8 mask costs: alternating, same process
    # What the mask costs: the sampling with and without it, alternating, against a whole step
    choose = {(b, on): [] for b in (1, 16) for on in (True, False)}
    steps = {b: [] for b in (1, 16)}
    for _ in range(7):
        for b, on in choose:
            choose[b, on].append(choose_ms(runner, b, on))
        for b in steps:
            steps[b].append(step_ms(runner, b))
    choose_med = {k: median(v) for k, v in choose.items()}
    vector_int8 = form == "int8" and runner.step.kernels in ("avx2", "vnni")
    rate = profile(runner.step, model, rounds=3) if vector_int8 else None
    rate_text = section(rate, macs_per_token(model), runner.step.kernels, model.config) if rate else "(not int8 here)"
    torch.set_num_threads(threads)
    step_med = {b: median([d for d, _ in v]) for b, v in steps.items()}
    native_ms = median([n for _, n in steps[1]])
    python_ms, _ = outside_ms(runner, GREEDY, 0, steps=100, rounds=3)  # bench.step_overhead
    described = runner.describe()
    nbytes = described["weight_bytes"]  # every matrix and its scales, the norms (one row of the embedding)
    bandwidth, cached = copy_bandwidth(), copy_bandwidth(mbytes=max(1, nbytes >> 20))
    floor_ms, cached_floor_ms = nbytes / bandwidth * 1e3, nbytes / cached * 1e3
    m = {k: median(v) for k, v in rates.items()}
    paired = median([h / i for h, i in zip(rates["http"], rates["in-process"])])
    import transformers

    kernels = described["kernels"]
    rows = [
        [f"TinyLLM over HTTP (native {form}, {kernels})", m["http"], m["http"] / m["hf"]],
        [f"TinyLLM in-process (native {form}, {kernels})", m["in-process"], m["in-process"] / m["hf"]],
        [f"TinyLLM in-process (native float32, {kernels})", m["float32"], m["float32"] / m["hf"]],
        [f"HF transformers {transformers.__version__} generate (float32)", m["hf"], 1.0],
        *([llama[t].label, m[f"llama.cpp {t}"], m[f"llama.cpp {t}"] / m["hf"]] for t in ("q8_0", "f32")),
    ]
    llama_own = median(llama["q8_0"].engine_rates)
    for peer in llama.values():
        peer.close()
    same = {k: outputs[k] == reference for k in ("http", "in-process", "float32")}
    same_llama = {t: outputs[f"llama.cpp {t}"] == reference for t in ("q8_0", "f32")}
    mask_rows = [
        [
            b,
            step_med[b],
            choose_med[b, False],
            choose_med[b, True],
            100 * (choose_med[b, True] - choose_med[b, False]) / step_med[b],
        ]
        for b in (1, 16)
    ]
    body = f"""
Batch 1, greedy, {args.tokens} new bytes after a {len(PROMPT)}-byte prompt, checkpoint `{args.checkpoint}`
({model.num_params():,} parameters); over HTTP one non-streamed POST /v1/generate per round, timed by the client,
on a kept-alive connection. Medians of {args.rounds} rounds after a warm-up, each round running the six in
another order (after HF's two threads, the next run finds the machine busier). The server ran
with its defaults: `/v1/model` said weight form **{served["decode_step"]["weight_form"]}**, step
`{served["decode_step"]["step"]}`, batch-invariant **{served["decode_step"]["batch_invariant"]}** (invariance is
always on in the native step: the numbers below are with it).

Weight form: {form} — {why}.

{table(["decoder", "tokens/s", "× HF"], rows)}

HTTP ÷ in-process: **{m["http"] / m["in-process"]:.2f}** (ratio of the medians); the median of the rounds' own
ratios (each round's two runs side by side): **{paired:.2f}**; inside the server, its engine generated at
{median(ENGINE_RATES[-args.rounds :]):,.0f} tokens/s (median of its `timing` fields; the rest of the HTTP time is the
request, the response's JSON and the client). TinyLLM ran with {threads} thread(s), in the server and
in-process (the server's default: one per core but one, which the event loop keeps); HF with {hf_threads} (torch's
default).

Greedy bytes against the torch step's float32 reference: native float32 gives the same bytes: **{same["float32"]}**;
HF gives the same bytes: {outputs["hf"] == reference}; llama.cpp on the GGUF export, F32: {same_llama["f32"]},
Q8_0: {same_llama["q8_0"]} (llama.cpp ran with {threads} thread(s), as TinyLLM; its own timing of Q8_0 said
{llama_own:,.0f} tokens/s).
In int8: over HTTP {same["http"]}, in-process {same["in-process"]} (a reduced form may choose another byte where
two are nearly tied; its cost is bounded by the checkpoint's `weight_forms.json`, see the model card).

## Where a token's time goes

- The native step alone, batch 1 at position 173: **{native_ms:.3f} ms** ({1e3 / native_ms:,.0f} steps/s), one call
  (every layer, 31 parallel regions of at most {threads} thread(s), no Python inside).
- It reads {nbytes / 1e6:.1f} MB of weights per token ({form} values and their scales, the norms). From memory,
  at the measured copy bandwidth of {bandwidth / 1e9:.1f} GB/s (read + write of a 512 MB tensor), that would take
  {floor_ms:.3f} ms; but {nbytes / 1e6:.1f} MB fits this CPU's last-level cache, where a copy of that size moves
  {cached / 1e9:.1f} GB/s (read + write, measured the same way): the floor for a step whose weights stay cached is
  **{cached_floor_ms:.3f} ms**, and the step takes {native_ms / cached_floor_ms:.1f}× it. The rest is the
  arithmetic (one VNNI instruction per 64 int8 products, four AVX2 ones per 32), attention over the cached
  positions, and quantizing each matrix product's input.
- Around it, per step: {step_med[1] - native_ms:.3f} ms (`runner.decode` minus the step's forward call:
  log-probabilities, the UTF-8 mask and sampling in the same native call, `model/native/sampling.h`, and the
  runner's Python); outside the native call, per token: {python_ms:.3f} ms (`python -m bench.step_overhead`,
  greedy, the median token); over HTTP, per token, {
        1e3 / m["http"] - 1e3 / m["in-process"]:+.3f} ms against in-process (the engine's loop and events, the
  response's JSON, the client; a whole response's tokens reach the event loop together).

## The int8 rate against this CPU's peak, at batch 1, 16 and 64

{rate_text}

One or two step threads: `python -m bench.kernel` (docs/benchmarks/kernel-cpu.md).

## The UTF-8 mask

The mask changes only what follows the step: `runner._choose` (log-probabilities, the mask, temperature 0.8
sampling) on fixed logits, with the mask (`utf8: "valid"`, the default) and without (`"any"`), medians of
200 calls, 7 alternating rounds; against a whole decode step (`runner.decode`, step and sampling, median of
40, position 173):

{table(["batch", "decode step ms", "sampling ms without", "sampling ms with", "mask's cost, % of a step"], mask_rows)}

Per round (tokens/s): {"; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in v) for k, v in rates.items())}.

Load average (1, 5, 15 min) at the end: {", ".join(f"{x:.1f}" for x in os.getloadavg())}: above 2 the machine
was shared and HF's two threads suffer most (they wait for each other at every operation), which inflates "× HF".

Reproduce: `.venv/bin/python -m bench.decode`
"""
    write_doc("decode-cpu", "Decode speed at batch 1 (CPU)", body)


if __name__ == "__main__":
    main()
