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
    p.add_argument("--threads", type=int, default=0, help="torch threads, here and in the server (0: default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache_dir = Path.home() / ".cache" / "tinyllm"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))

    model = checkpoint.load_model(args.checkpoint)
    form, why = weight_forms.select(model, args.checkpoint, args.dtype, cache_dir)
    runner = Runner(model, max_batch=1, form=form, compile=True)
    runner.start_compiling().join()
    reference = [s.token for s in generate(Runner(model), list(PROMPT), args.tokens, GREEDY)]  # float32, eager
    hf = HuggingFace(args.checkpoint)

    flags = ["--dtype", args.dtype, "--compile", "--threads", str(args.threads), "--max-batch", "8"]
    with running_server(args.checkpoint, *flags, timeout=120) as srv:
        step = wait_compiled(srv.url)
        for warm in (in_process(runner, 16), over_http(srv.url, 16), hf.generate(PROMPT, 16)):
            del warm
        rates = {"http": [], "in-process": [], "hf": []}
        outputs = {}
        for r in range(args.rounds):  # alternate, so all three see the same machine state
            rate, outputs["http"] = over_http(srv.url, args.tokens)
            rates["http"].append(rate)
            rate, outputs["in-process"] = in_process(runner, args.tokens)
            rates["in-process"].append(rate)
            rate, outputs["hf"] = hf.generate(PROMPT, args.tokens)
            rates["hf"].append(rate)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rates.items()), flush=True)

    step_bytes = weight_bytes(runner.decoder)
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

HTTP ÷ in-process: **{m["http"] / m["in-process"]:.2f}**. Same bytes as the float32 eager reference
(`TinyLLM.generate`): over HTTP {same["http"]}, in-process {same["in-process"]}; HF and the reference agree:
{outputs["hf"] == reference}.

Floor: {step_bytes / 1e6:.1f} MB of decode-step weights read per token ÷ {bandwidth / 1e9:.1f} GB/s measured
copy bandwidth (read + write of a 512 MB tensor) = {floor:,.0f} tokens/s. A small model's weights may sit
partly in the last-level cache, so the floor is an estimate, not a hard limit.

Per round (tokens/s): {"; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in v) for k, v in rates.items())}.

Reproduce: `.venv/bin/python -m bench.decode --dtype {args.dtype}`
"""
    write_doc("decode-cpu", "Decode speed at batch 1 (CPU)", body)


if __name__ == "__main__":
    main()
