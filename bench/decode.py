"""Benchmark 1: batch-1 greedy decode speed — TinyLLM over HTTP, TinyLLM in-process, and Hugging Face
transformers' LlamaForCausalLM.generate on the same weights, in alternating rounds (medians compared).

TinyLLM runs as it serves: the weight form chosen for this machine (--dtype auto), the compiled decode step.
Over HTTP it is a real `tinyllm-serve` process (one non-streamed POST /v1/generate per round, timed by the
client); in-process it is the same runner configuration driven by model.generate. Both are set against the
memory-bandwidth floor: the decode step's weight bytes per token over this machine's measured bandwidth.

    python -m bench.decode [--checkpoint checkpoints/shakespeare] [--tokens 256] [--rounds 5] [--dtype auto]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx
import torch

from bench.common import DEFAULT_CHECKPOINT, HuggingFace, copy_bandwidth, median, table, weight_bytes, write_doc
from model import checkpoint, weight_forms
from model.generate import generate
from model.runner import Runner
from model.sampling import SamplingParams
from server.process import running_server

PROMPT = b"ROMEO:\nBut soft, what light through yonder window breaks?\n"
GREEDY = SamplingParams(temperature=0)


def in_process(runner: Runner, n: int) -> tuple[float, list[int]]:
    t = time.perf_counter()
    out = [s.token for s in generate(runner, list(PROMPT), n, GREEDY)]
    return n / (time.perf_counter() - t), out


def over_http(url: str, n: int) -> tuple[float, list[int]]:
    body = {"prompt": PROMPT.decode(), "max_new_tokens": n, "temperature": 0}
    t = time.perf_counter()
    r = httpx.post(f"{url}/v1/generate", json=body, timeout=600)
    rate = n / (time.perf_counter() - t)
    r.raise_for_status()
    return rate, [tok["id"] for tok in r.json()["tokens"]]


@torch.inference_mode()
def profile_step(runner: Runner, steps: int = 100, top: int = 8) -> tuple[float, list[list]]:
    """The batch-1 decode step alone at position 150: its wall time (ms, unprofiled), and its most costly ops
    by self CPU time under torch.profiler (which adds its own overhead per op), per step."""
    tokens, positions = runner.tokens[:1], runner.positions[:1].fill_(150)
    for _ in range(20):
        runner.step(1)(tokens, positions, runner.cache.k, runner.cache.v)
    t = time.perf_counter()
    for _ in range(steps):
        runner.step(1)(tokens, positions, runner.cache.k, runner.cache.v)
    wall_ms = (time.perf_counter() - t) / steps * 1e3
    with torch.profiler.profile() as prof:
        for _ in range(steps):
            runner.step(1)(tokens, positions, runner.cache.k, runner.cache.v)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        [e.key[:60], e.count / steps, e.self_cpu_time_total / steps / 1e3, 100 * e.self_cpu_time_total / total]
        for e in events[:top]
    ]
    return wall_ms, rows + [["all ops", sum(e.count for e in events) / steps, total / steps / 1e3, 100.0]]


def wait_compiled(url: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while not (step := httpx.get(f"{url}/v1/model").json()["decode_step"])["compiled"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the server's decode step was not compiled in time")
        time.sleep(1)
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dtype", default="auto", help="the decode step's weight form, as tinyllm-serve --dtype")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the server and of TinyLLM in-process (0: the server's default)",
    )
    args = p.parse_args()
    hf_threads = torch.get_num_threads()  # HF runs with torch's default: one thread per core
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) - 1)  # as tinyllm-serve chooses
    torch.set_num_threads(threads)
    cache_dir = Path.home() / ".cache" / "tinyllm"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))

    model = checkpoint.load_model(args.checkpoint)
    form, _, why = weight_forms.select(model, args.checkpoint, args.dtype, cache_dir)
    runner = Runner(model, max_batch=1, form=form, compile=True)
    runner.start_compiling().join()
    reference = [s.token for s in generate(Runner(model), list(PROMPT), args.tokens, GREEDY)]  # float32, eager
    exact = Runner(model, max_batch=1, form="float32", compile=True)
    exact.start_compiling().join()
    exact_same = [s.token for s in generate(exact, list(PROMPT), args.tokens, GREEDY)] == reference
    hf = HuggingFace(args.checkpoint)

    def hf_generate(n: int) -> tuple[float, list[int]]:
        torch.set_num_threads(hf_threads)
        try:
            return hf.generate(PROMPT, n)
        finally:
            torch.set_num_threads(threads)

    flags = ["--dtype", args.dtype, "--compile", "--threads", str(threads), "--max-batch", "8"]
    with running_server(args.checkpoint, *flags, timeout=120) as srv:
        step = wait_compiled(srv.url)
        for warm in (in_process(runner, 16), over_http(srv.url, 16), hf_generate(16)):
            del warm
        rates = {"http": [], "in-process": [], "hf": []}
        outputs = {}
        for r in range(args.rounds):  # alternate, so all three see the same machine state
            rate, outputs["http"] = over_http(srv.url, args.tokens)
            rates["http"].append(rate)
            rate, outputs["in-process"] = in_process(runner, args.tokens)
            rates["in-process"].append(rate)
            rate, outputs["hf"] = hf_generate(args.tokens)
            rates["hf"].append(rate)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rates.items()), flush=True)

    step_ms, profile_rows = profile_step(runner)
    step_bytes = weight_bytes(runner.decoders[0])
    bandwidth = copy_bandwidth()
    floor = bandwidth / step_bytes
    m = {k: median(v) for k, v in rates.items()}
    import transformers

    rows = [
        [f"TinyLLM over HTTP ({form}, compiled)", m["http"], m["http"] / m["hf"], 100 * m["http"] / floor],
        [
            f"TinyLLM in-process ({form}, compiled)",
            m["in-process"],
            m["in-process"] / m["hf"],
            100 * m["in-process"] / floor,
        ],
        [f"HF transformers {transformers.__version__} generate (float32)", m["hf"], 1.0, 100 * m["hf"] / floor],
        ["memory-bandwidth floor", floor, floor / m["hf"], 100.0],
    ]
    same = {k: outputs[k] == reference for k in ("http", "in-process")}
    body = f"""
Batch 1, greedy, {args.tokens} new bytes after a {len(PROMPT)}-byte prompt, checkpoint `{args.checkpoint}`
({model.num_params():,} parameters). Medians of {args.rounds} alternating rounds after a warm-up.

Weight form: **{form}** — {why}. Server: {step["compiled_in_s"]:.0f} s to compile its decode step.

{table(["decoder", "tokens/s", "× HF", "% of floor"], rows)}

HTTP ÷ in-process: **{m["http"] / m["in-process"]:.2f}**. TinyLLM ran with {threads} torch thread(s), in the
server and in-process (the server's default: one per core but one, which the event loop keeps); HF with
{hf_threads} (torch's default).

Greedy bytes against the float32 eager reference (`TinyLLM.generate`): the compiled float32 step gives the
same bytes: **{exact_same}**; HF gives the same bytes: {outputs["hf"] == reference}. In the {form} form: over HTTP
{same["http"]}, in-process {same["in-process"]} (a reduced form may choose another byte where two are nearly
tied; its cost is bounded by the checkpoint's `weight_forms.json`, see the model card).

Floor: {step_bytes / 1e6:.1f} MB of decode-step weights read per token ÷ {bandwidth / 1e9:.1f} GB/s measured
copy bandwidth (read + write of a 512 MB tensor) = {floor:,.0f} tokens/s. A small model's weights may sit
partly in the last-level cache, so the floor is an estimate, not a hard limit.

Where a token's time goes: the compiled batch-1 step alone takes **{step_ms:.2f} ms** ({1e3 / step_ms:,.0f} steps/s;
reading its weights at the measured bandwidth would take {step_bytes / bandwidth * 1e3:.2f} ms). Under
`torch.profiler` (which slows every op), its most costly ops, per step:

{table(["op (self time)", "calls per step", "ms per step", "% of op time"], profile_rows)}

Per round (tokens/s): {"; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in v) for k, v in rates.items())}.

Reproduce: `.venv/bin/python -m bench.decode --dtype {args.dtype}`
"""
    write_doc("decode-cpu", "Decode speed at batch 1 (CPU)", body)


if __name__ == "__main__":
    main()
