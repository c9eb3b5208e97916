"""Benchmark: the HTTP side, this checkout against an earlier commit, streaming clients, in the same run.

The earlier commit is exported (git archive) into a temporary folder with this checkout's native step copied in,
and both servers run at once on the same checkpoint (max batch 64, their default threads). Each round loads every
client count on both, the sides alternating and the order flipping every round, so both see the same machine
(a shared 2-core box: its load average is recorded with each load). Each load is bench.serving's: every client
streams /v1/generate (temperature 0.8, its own seed) and we record aggregate tokens/s, time to first token, and
the server's CPU time per token (its event loop's, and all its threads'), read around the load.
Medians over rounds; the ratio is after / before. Writes docs/benchmarks/serving-before-after.md.

    python -m bench.serving_before_after --before 358e216 [--clients 16 64] [--rounds 4] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import DEFAULT_CHECKPOINT, ROOT, median, table, write_doc
from bench.serving import load
from server.process import running_server


def export(commit: str, into: Path) -> Path:
    """The commit's files in `into` (no git metadata), with this checkout's native step binary copied in."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for binary in (ROOT / "model" / "native").glob("_step*.so"):
        shutil.copy(binary, into / "model" / "native")
    return into


def cpu_ns(pid: int) -> tuple[int, int]:
    """CPU time a process has run, in ns: its main thread (the event loop, with all the HTTP work) and all its
    threads together (/proc schedstat: unlike wall time, barely moved by other work on the machine)."""
    main = total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            ran = int((task / "schedstat").read_text().split()[0])
            total += ran
            main += ran if task.name == str(pid) else 0
    return main, total


def measured(srv, clients: int, tokens: int) -> dict:
    """bench.serving's load, with the server's CPU time per token: its event loop's and all of it."""
    main0, total0 = cpu_ns(srv.proc.pid)
    result = asyncio.run(load(srv.url, clients, tokens))
    main1, total1 = cpu_ns(srv.proc.pid)
    result["loop_us_per_token"] = (main1 - main0) / 1e3 / result["tokens"]
    result["server_us_per_token"] = (total1 - total0) / 1e3 / result["tokens"]
    result["load_avg"] = os.getloadavg()[0]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the earlier commit")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--tokens", type=int, default=128)
    args = p.parse_args()
    flags = ["--max-batch", str(max(args.clients)), "--max-queue", "1024", "--request-timeout", "600"]
    runs = {(side, c): [] for side in ("before", "after") for c in args.clients}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        before_root = export(args.before, Path(tmp))
        servers = {
            "before": stack.enter_context(
                running_server(args.checkpoint, *flags, root=before_root, env={"PYTHONPATH": str(before_root)})
            ),
            "after": stack.enter_context(running_server(args.checkpoint, *flags, env={"PYTHONPATH": str(ROOT)})),
        }
        for srv in servers.values():  # warm-up
            asyncio.run(load(srv.url, 4, 16))
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for clients in args.clients:
                for side in order:
                    result = measured(servers[side], clients, args.tokens)
                    runs[side, clients].append(result)
                    print(json.dumps({"round": r, "side": side, **result}))
    rows = []
    for clients in args.clients:
        b, a = runs["before", clients], runs["after", clients]
        rate_b, rate_a = median([x["tokens_per_s"] for x in b]), median([x["tokens_per_s"] for x in a])
        p99_b, p99_a = median([x["ttft_p99"] for x in b]) * 1e3, median([x["ttft_p99"] for x in a]) * 1e3
        p50_b, p50_a = median([x["ttft_p50"] for x in b]) * 1e3, median([x["ttft_p50"] for x in a]) * 1e3
        rounds = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(a, b)]
        loop_b, loop_a = median([x["loop_us_per_token"] for x in b]), median([x["loop_us_per_token"] for x in a])
        all_b, all_a = median([x["server_us_per_token"] for x in b]), median([x["server_us_per_token"] for x in a])
        rows.append(
            [
                clients,
                rate_b,
                rate_a,
                rate_a / rate_b,
                ", ".join(f"{x:.2f}" for x in rounds),
                p50_b,
                p50_a,
                p99_b,
                p99_a,
                loop_b,
                loop_a,
                loop_a / loop_b,
                all_b,
                all_a,
            ]
        )
    loads = [x["load_avg"] for xs in runs.values() for x in xs]
    body = f"""
Before: `{args.before}`; after: this checkout. Both servers at once on `{args.checkpoint}` (max batch
{max(args.clients)}), loaded alternately, the order flipping every round; {args.rounds} rounds; each client streams
{args.tokens} new bytes from `/v1/generate` (temperature 0.8, its own seed). The machine's 1-minute load average
during the loads: {min(loads):.1f} to {max(loads):.1f} (other work shared its cores: compare the ratios, measured
seconds apart, rather than the rates with other runs). Medians over rounds; ratio = after / before.
"Loop µs/token": CPU time of the server's main thread (the event loop: every route, stream and
socket write) per token streamed; "server µs/token": CPU time of all its threads (the engine's step included)
per token; both from /proc schedstat, so other work on the machine moves them far less than it moves the rates.

{
        table(
            [
                "clients",
                "before tok/s",
                "after tok/s",
                "ratio",
                "ratio per round",
                "before TTFT p50 ms",
                "after TTFT p50 ms",
                "before TTFT p99 ms",
                "after TTFT p99 ms",
                "before loop µs/token",
                "after loop µs/token",
                "loop ratio",
                "before server µs/token",
                "after server µs/token",
            ],
            rows,
        )
    }

Reproduce: `.venv/bin/python -m bench.serving_before_after --before {args.before}`
"""
    write_doc("serving-before-after", "The HTTP side before and after, streaming clients", body)


if __name__ == "__main__":
    main()
