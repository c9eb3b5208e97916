"""Benchmark peer: llama.cpp (through llama-cpp-python, built from source for this CPU) on the same weights,
converted by tinyllm-export-gguf, fed the prompt's bytes as token ids.

On our benchmark prompts: batch-1 greedy decode (bench.decode's PROMPT, 256 new bytes) and a 512-byte prompt's
prefill, at 1 and 2 threads, in alternating rounds beside TinyLLM in-process; and what makes the comparison fair:
llama.cpp's greedy bytes equal ours in float32 (F32 and F16 files), and its Q8_0 file's held-out bits per byte
are within 0.01 of float32's. Writes docs/benchmarks/peers.md.

    python -m bench.peers [--checkpoint checkpoints/shakespeare] [--tokens 256] [--rounds 7]

bench.decode and bench.serving show llama.cpp beside Hugging Face with `LlamaCpp(checkpoint, type_, threads)`:
its generate(prompt, n) answers as bench.common.HuggingFace.generate does.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from bench.common import DEFAULT_CHECKPOINT, PROMPT, SHAKESPEARE_TEXT, median, table, write_doc
from model import checkpoint, form_quality
from model.export_gguf import export
from model.generate import generate
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence

GREEDY = SamplingParams(temperature=0)

LLAMA_CPP_PYTHON = "0.3.36"
BUILD = {"CMAKE_ARGS": "-DGGML_NATIVE=ON"}  # -march=native: every instruction this CPU has (our step picks at run time)
DATA = SHAKESPEARE_TEXT
CACHE = Path(tempfile.gettempdir()) / "tinyllm-gguf"
TYPES = ("f32", "f16", "q8_0")
THREADS = (1, 2)  # llama.cpp's thread counts tried (this machine has 2 cores)


def llama_cpp():
    """The llama_cpp module, built from PyPI's source distribution into this environment on first use (about 11
    minutes on 2 cores; pip keeps it, so once per environment)."""
    try:
        if metadata.version("llama-cpp-python") == LLAMA_CPP_PYTHON:
            import llama_cpp

            return llama_cpp
    except metadata.PackageNotFoundError:
        pass
    print(f"building llama-cpp-python {LLAMA_CPP_PYTHON} from source ({BUILD['CMAKE_ARGS']}) ...", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
    subprocess.run([*cmd, "--no-binary", "llama-cpp-python"], check=True, env={**os.environ, **BUILD})
    import llama_cpp

    return llama_cpp


def gguf_file(ckpt, type_: str) -> Path:
    """The checkpoint exported as GGUF (`type_`: f32, f16, q8_0), kept by the checkpoint's content hash."""
    path = CACHE / f"{Path(ckpt).name}-{checkpoint.content_sha256(ckpt)[:12]}-{type_}.gguf"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        export(ckpt, path, type_)
    return path


class LlamaCpp:
    """llama.cpp on a checkpoint's weights: `type_` is the GGUF file's (f32, f16, q8_0), `threads` its thread
    count for decode and prefill. Token ids are bytes; nothing is added around a prompt."""

    def __init__(self, ckpt, type_: str = "q8_0", threads: int = 2, logits_all: bool = False):
        lc = llama_cpp()
        cfg = checkpoint.load_config(ckpt)
        self.type_, self.threads, self.version = type_, threads, metadata.version("llama-cpp-python")
        self.llm = lc.Llama(
            str(gguf_file(ckpt, type_)),
            n_ctx=cfg.context_length,
            n_batch=cfg.context_length,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            verbose=False,
        )
        self._lc, self._ctx = lc, self.llm._ctx.ctx
        self.engine_rates: list[float] = []  # llama.cpp's own timing of each generate (its perf counters)

    @property
    def label(self) -> str:
        return f"llama.cpp (llama-cpp-python {self.version}) {self.type_.upper()}, {self.threads} thread(s)"

    def _next(self) -> int:
        """The greedy byte after what was evaluated: argmax of the last position's logits."""
        logits = np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self._ctx, -1), shape=(256,))
        return int(logits.argmax())

    def generate(self, prompt: bytes, n: int) -> tuple[float, list[int]]:
        """tokens/s of n greedy new bytes after `prompt` (its prefill included, as HF's and ours are timed), and
        the bytes."""
        self.llm.reset()
        self._lc.llama_perf_context_reset(self._ctx)
        t = time.perf_counter()
        self.llm.eval(list(prompt))
        out = [self._next()]
        while len(out) < n:
            self.llm.eval(out[-1:])
            out.append(self._next())
        elapsed = time.perf_counter() - t
        perf = self._lc.llama_perf_context(self._ctx)
        self.engine_rates.append(n / ((perf.t_p_eval_ms + perf.t_eval_ms) / 1e3))
        return n / elapsed, out

    def prefill_s(self, prompt: bytes) -> float:
        """Seconds to evaluate `prompt` from an empty cache and have its next byte's logits."""
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(list(prompt))
        self._next()
        return time.perf_counter() - t

    def close(self) -> None:
        """Free the model now (llama-cpp-python's own finaliser fails at interpreter exit)."""
        self.llm.close()

    def window_logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Logits at every position of each window (B, T) -> (B, T, 256), each from an empty cache (needs
        logits_all=True): form_quality.validation_loss's logits_of."""
        out = []
        for row in windows.tolist():
            self.llm.reset()
            self.llm.eval(row)
            out.append(torch.from_numpy(np.array(self.llm.scores[: len(row)])))
        return torch.stack(out)


def held_out(path: Path = DATA) -> bytes:
    """The last 10% of the text (Tiny Shakespeare), as weight_forms.json's records measure it."""
    data = Path(path).read_bytes()
    return data[math.floor(len(data) * 0.9) :]


def bits_per_byte(logits_of, data: bytes, context: int) -> float:
    return form_quality.validation_loss(logits_of, data, context, batch=4) / math.log(2)


def ours(model, form: str, n: int):
    """TinyLLM in-process in `form`: tokens/s of n greedy bytes after PROMPT (as bench.decode's in_process), and
    seconds to prefill a prompt into its cache and choose the next byte."""
    runner = Runner(model, form=form)

    def decode() -> float:
        t = time.perf_counter()
        out = list(generate(runner, list(PROMPT), n, GREEDY))
        return len(out) / (time.perf_counter() - t)

    def prefill(prompt: bytes) -> float:
        t = time.perf_counter()
        runner.prefill(Sequence(list(prompt), 1, GREEDY), row=0, start=0, end=len(prompt))
        return time.perf_counter() - t

    return decode, prefill


def timed_rounds(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Each run once per round, each round in another order (all see the same machine states); a warm-up first."""
    for run in runs.values():
        run()
    names, results = list(runs), {name: [] for name in runs}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(runs[name]())
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in results.items()), flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--data", type=Path, default=DATA, help="the text whose last 10%% is held out")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - 1))  # TinyLLM's, as tinyllm-serve chooses
    model = checkpoint.load_model(args.checkpoint)
    ctx, form = model.config.context_length, form_quality.default_form(args.checkpoint)[0]
    text = held_out(args.data)
    prompt = text[:ctx]  # a 512-byte prompt where the context allows it

    # the same bytes first: a speed is only comparable on the same computation
    reference = [s.token for s in generate(Runner(model, native_step=False), list(PROMPT), args.tokens, GREEDY)]
    peers = {f"llama.cpp {t.upper()} x{n}": LlamaCpp(args.checkpoint, t, n) for t in TYPES for n in THREADS}
    same = {name: peer.generate(PROMPT, args.tokens)[1] == reference for name, peer in peers.items()}
    print("greedy bytes equal ours in float32:", same, flush=True)

    mine = {f"TinyLLM {f}": ours(model, f, args.tokens) for f in dict.fromkeys((form, "float32"))}
    decode = {name: (lambda p=peer: p.generate(PROMPT, args.tokens)[0]) for name, peer in peers.items()}
    decode |= {name: rate for name, (rate, _) in mine.items()}
    rates = timed_rounds(decode, args.rounds)
    prefill = {name: (lambda p=peer: p.prefill_s(prompt) * 1e3) for name, peer in peers.items()}
    prefill |= {name: (lambda fn=fn: fn(prompt) * 1e3) for name, (_, fn) in mine.items()}
    prefill_ms = timed_rounds(prefill, args.rounds)

    bpb = {"TinyLLM float32": bits_per_byte(form_quality.form_logits(model, "float32")[0], text, ctx)}
    q8_0 = {n: median(rates[f"llama.cpp Q8_0 x{n}"]) for n in THREADS}
    scoring_threads = max(q8_0, key=q8_0.get)  # the faster count here: it is only a matter of time
    for t in TYPES:
        scorer = LlamaCpp(args.checkpoint, t, scoring_threads, logits_all=True)
        bpb[f"llama.cpp {t.upper()}"] = bits_per_byte(scorer.window_logits, text, ctx)
        scorer.close()
        print(bpb, flush=True)
    write_report(args, model, form, peers, same, rates, prefill_ms, bpb, len(prompt))
    for peer in peers.values():
        peer.close()


def write_report(args, model, form, peers, same, rates, prefill_ms, bpb, prompt_len) -> None:
    m, pm = {k: median(v) for k, v in rates.items()}, {k: median(v) for k, v in prefill_ms.items()}
    ours_name = f"TinyLLM {form}"
    rows = []
    for name in rates:
        engine = f"{median(peers[name].engine_rates):,.0f}" if name in peers else "—"
        rows.append([name, m[name], m[name] / m[ours_name], engine, pm[name], same.get(name, "reference")])
    best = {t: max((name for name in peers if name.startswith(f"llama.cpp {t.upper()} ")), key=m.get) for t in TYPES}
    f32 = bpb["TinyLLM float32"]
    bpb_rows = [[name, f"{v:.4f}", f"{v - f32:+.4f}"] for name, v in bpb.items()]
    q8_ok = abs(bpb["llama.cpp Q8_0"] - f32) <= 0.01
    exact = all(same[name] for name in peers if " F32 " in name or " F16 " in name)
    windows = len(held_out(args.data)) // model.config.context_length
    headers = ["decoder", "tokens/s", f"× {ours_name}", "llama.cpp's own tok/s", f"prefill {prompt_len} B, ms"]
    body = f"""
llama.cpp through llama-cpp-python {peers[next(iter(peers))].version}, built from PyPI's source distribution on
this machine (`CMAKE_ARGS="{BUILD["CMAKE_ARGS"]}" pip install llama-cpp-python=={LLAMA_CPP_PYTHON} --no-binary
llama-cpp-python`), on `{args.checkpoint}` ({model.num_params():,} parameters) exported by `tinyllm-export-gguf`
as F32, F16 and Q8_0. Prompts are fed as byte ids (`Llama.eval(list(prompt))`), greedy is the argmax of the last
position's logits (`llama_get_logits_ith`), llama-cpp-python's defaults otherwise (KV cache in F16, flash
attention off); its build's CPU features: `{llama_cpp().llama_print_system_info().decode().strip()}`. TinyLLM runs
in-process with {torch.get_num_threads()} thread(s), as `tinyllm-serve` chooses on
this machine, in its default weight form ({form}, the native step) and in float32.

## Same computation

Greedy bytes, {args.tokens} after bench.decode's {len(PROMPT)}-byte prompt, against TinyLLM's float32 reference
(the torch step): {", ".join(f"{k}: **{v}**" for k, v in same.items())}. F32 and F16 give our bytes: **{exact}**.

Held-out bits per byte (the last 10% of `{args.data.name}`, all {windows}
non-overlapping {model.config.context_length}-byte windows, each from an empty cache, as
`model.form_quality.validation_loss`; llama.cpp's logits from `logits_all=True`):

{table(["model", "bits/byte", "− TinyLLM float32"], bpb_rows)}

Q8_0 within 0.01 bits/byte of float32: **{q8_ok}**.

## Speed

Batch 1, greedy, {args.tokens} new bytes after the {len(PROMPT)}-byte prompt (tokens/s, the prompt's prefill
included, as bench.decode times HF and TinyLLM), and the prefill of a {prompt_len}-byte prompt (ms, from an empty
cache to the next byte's logits). Medians of {args.rounds} alternating rounds after a warm-up, each round in
another order: this 2-core VM is shared (other jobs ran beside it), so absolute numbers drift; read the ratios.
Load average (1, 5, 15 min) at the end of the run: {", ".join(f"{x:.2f}" for x in os.getloadavg())}: with more
runnable processes than cores, 2 threads wait for each other at every operation of a step.
"llama.cpp's own" is its perf counters' rate over the same generations (prompt + decode eval time only; the rest
is llama-cpp-python's Python per token).

{table([*headers, "same bytes"], rows)}

The better thread count per file: {", ".join(f"{t.upper()}: {best[t].rsplit('x', 1)[1]}" for t in TYPES)}.

Per round (tokens/s): {"; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in v) for k, v in rates.items())}.
Per round (prefill ms): {"; ".join(f"{k} " + ", ".join(f"{x:.1f}" for x in v) for k, v in prefill_ms.items())}.

Not measured: llama.cpp's batched throughput (llama-cpp-python's `Llama` holds one sequence; several need its
low-level `llama_batch` API, not written here).

Reproduce: `.venv/bin/python -m bench.peers` (builds llama-cpp-python first if it is missing, about 11 minutes).
"""
    write_doc("peers", "llama.cpp on the same weights", body)


if __name__ == "__main__":
    main()
