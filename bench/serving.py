"""Benchmarks 2 and 4: throughput and latency against concurrency over real HTTP, and the server's memory.

Two real servers on the same checkpoint, as they serve by default (the native step in the checkpoint's weight
form, batch-invariant): the engine with continuous batching (max batch 64), and the same engine with batching
off (max batch 1, one request at a time). For 1, 4, 16 and 64 concurrent clients, each streaming 128 new
tokens, the two are loaded alternately, and between them the baseline runs: Hugging Face `generate` at batch
1, in-process, on the same weights, and llama.cpp at batch 1 on them (bench.peers: the Q8_0 GGUF export). We
record aggregate tokens/s (and its ratio to the baselines), time to
first token and inter-token latency (p50/p99), and the batched server's resident memory, idle and at peak.

    python -m bench.serving [--checkpoint checkpoints/shakespeare] [--clients 1 4 16 64] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

import httpx

from bench.common import (
    DEFAULT_CHECKPOINT,
    DOCS,
    PROMPT,
    HuggingFace,
    median,
    percentile,
    plot,
    rss_mb,
    table,
    write_doc,
)
from bench.peers import LlamaCpp
from server.process import running_server


class PeakRSS:
    """Polls a process's resident memory in a thread while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def one_client(client: httpx.AsyncClient, i: int, tokens: int) -> tuple[float, list[float], int]:
    body = {"prompt": f"ROMEO {i}:\n", "max_new_tokens": tokens, "temperature": 0.8, "seed": i, "stream": True}
    t0 = time.perf_counter()
    stamps = []
    async with client.stream("POST", "/v1/generate", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith('data: {"token"'):
                stamps.append(time.perf_counter())
    ttft = stamps[0] - t0
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return ttft, itl, len(stamps)


async def load(url: str, clients: int, tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*[one_client(client, i, tokens) for i in range(clients)])
        wall = time.perf_counter() - t0
    ttft = [r[0] for r in results]
    itl = [x for r in results for x in r[1]]
    total = sum(r[2] for r in results)
    return {
        "clients": clients,
        "tokens": total,
        "wall_s": wall,
        "tokens_per_s": total / wall,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50),
        "itl_p99": percentile(itl, 99),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="the servers' --threads (0 = their default)")
    p.add_argument("--llama-threads", type=int, default=2, help="llama.cpp's threads (bench.peers: the better)")
    args = p.parse_args()
    top = max(args.clients)
    common = ["--max-queue", "1024", "--request-timeout", "600", "--threads", str(args.threads)]
    results = {"batched": [], "one at a time": []}
    hf, hf_rates = HuggingFace(args.checkpoint), []
    llama, llama_rates = LlamaCpp(args.checkpoint, "q8_0", args.llama_threads), []
    with (
        running_server(args.checkpoint, "--max-batch", str(top), *common) as batched,
        running_server(args.checkpoint, "--max-batch", "1", *common) as single,
    ):
        servers = {"batched": batched, "one at a time": single}
        step = httpx.get(f"{batched.url}/v1/model").json()["decode_step"]
        for srv in servers.values():  # warm-up
            asyncio.run(load(srv.url, 2, 16))
        hf.generate(PROMPT, 16), llama.generate(PROMPT, 16)
        idle_rss = rss_mb(batched.proc.pid)
        peak = {}
        for clients in args.clients:
            for name, srv in servers.items():  # alternate, so both see the same machine state
                with PeakRSS(srv.proc.pid) as mem:
                    r = asyncio.run(load(srv.url, clients, args.tokens))
                r["peak_rss_mb"] = mem.peak
                results[name].append(r)
                print(json.dumps({"server": name, **r}))
            peak[clients] = results["batched"][-1]["peak_rss_mb"]
            hf_rates.append(hf.generate(PROMPT, args.tokens)[0])
            print(json.dumps({"baseline": "hf batch 1", "tokens_per_s": hf_rates[-1]}))
            llama_rates.append(llama.generate(PROMPT, args.tokens)[0])
            print(json.dumps({"baseline": "llama.cpp batch 1", "tokens_per_s": llama_rates[-1]}))
    hf_rate, llama_rate = median(hf_rates), median(llama_rates)
    llama.close()

    rows = []
    for b, s in zip(results["batched"], results["one at a time"]):
        rows.append(
            [
                b["clients"],
                b["tokens_per_s"],
                s["tokens_per_s"],
                b["tokens_per_s"] / s["tokens_per_s"],
                b["tokens_per_s"] / hf_rate,
                b["tokens_per_s"] / llama_rate,
                b["ttft_p50"] * 1e3,
                b["ttft_p99"] * 1e3,
                s["ttft_p99"] * 1e3,
                b["itl_p50"] * 1e3,
                b["itl_p99"] * 1e3,
            ]
        )
    throughput_png = plot(
        "serving-throughput",
        lambda ax: (
            ax.plot(args.clients, [r["tokens_per_s"] for r in results["batched"]], "o-", label="continuous batching"),
            ax.plot(args.clients, [r["tokens_per_s"] for r in results["one at a time"]], "o-", label="one at a time"),
            ax.set_xscale("log", base=2),
            ax.set_xlabel("concurrent clients"),
            ax.set_ylabel("aggregate tokens/s"),
            ax.legend(),
        ),
    )
    ttft_png = plot(
        "serving-ttft",
        lambda ax: (
            ax.plot(args.clients, [r["ttft_p99"] for r in results["batched"]], "o-", label="batching, p99"),
            ax.plot(args.clients, [r["ttft_p50"] for r in results["batched"]], "o--", label="batching, p50"),
            ax.plot(args.clients, [r["ttft_p99"] for r in results["one at a time"]], "o-", label="one at a time, p99"),
            ax.set_xscale("log", base=2),
            ax.set_yscale("log"),
            ax.set_xlabel("concurrent clients"),
            ax.set_ylabel("time to first token (s)"),
            ax.legend(),
        ),
    )
    body = f"""
Each client streams {args.tokens} new tokens (temperature 0.8, its own seed) from `{args.checkpoint}` over
HTTP (httpx, server-sent events); the load generator runs on the same machine. "One at a time" is the same
engine started with `--max-batch 1`. Both servers ran with `--threads {args.threads}` (0 = the server's default: one
per core but one); the step: `{step["step"]}` in {step["weight_form"]}, batch-invariant {step["batch_invariant"]}.
Baseline: Hugging Face `generate` at batch 1, greedy, {args.tokens} new bytes, in-process on the
same weights (float32), measured between the loads: median **{hf_rate:.1f} tokens/s**
({", ".join(f"{r:.0f}" for r in hf_rates)}); and {llama.label} at batch 1, the same greedy run, between the
loads too: median **{llama_rate:.1f} tokens/s** ({", ".join(f"{r:.0f}" for r in llama_rates)}). llama.cpp's
batched throughput is not measured (bench.peers says why).

{
        table(
            [
                "clients",
                "batched tok/s",
                "one-at-a-time tok/s",
                "ratio",
                "batched × HF batch 1",
                "batched × llama.cpp batch 1",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "1-at-a-time TTFT p99 ms",
                "ITL p50 ms",
                "ITL p99 ms",
            ],
            rows,
        )
    }

![throughput]({throughput_png}) ![time to first token]({ttft_png})

## Memory (benchmark 4)

Resident memory of the batched server (max batch {top}): idle {idle_rss:.0f} MB; peak under load:
{", ".join(f"{c} clients {m:.0f} MB" for c, m in peak.items())}.

Reproduce: `.venv/bin/python -m bench.serving`
{kept_sections()}"""
    write_doc("serving", "Throughput and latency against concurrency", body)


KEPT = "\n## Where the Python time goes"  # a hand-written section (a profile), kept when this doc is rewritten


def kept_sections() -> str:
    path = DOCS / "serving.md"
    text = path.read_text() if path.exists() else ""
    return text[text.index(KEPT) :] if KEPT in text else ""


if __name__ == "__main__":
    main()
