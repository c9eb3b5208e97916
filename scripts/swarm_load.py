"""The streaming load of scripts/swarm-test.sh, and its report.

    swarm_load.py run URL OUT.jsonl --stop-file FILE     # clients stream /v1/generate until FILE exists
    swarm_load.py report OUT.jsonl EVENTS.json    # sent / completed / failed per phase; exit 1 on a missed target

`run` keeps --clients streams open at once, each a new request as soon as the last ends, and writes one JSON
line per request: start and end (Unix time), the replica that answered (the balancer's X-Tinyllm-Replica
header), and the error if it failed. A request completes when its stream ends with a finish_reason, as many
token events as its usage says, and [DONE]; anything else is a failure: an HTTP error, an error event (a
replica that drained it), a stream cut short (a connection error) or a timeout. It only talks to 127.0.0.1,
stops starting requests when the stop file appears, after --max-seconds or --max-requests, and lets the
ones in flight finish.

`report` reads the events the test script wrote (rolling update start and end; the kill: when `docker kill`
was called and when it returned, the killed replica's address; recovery) and puts each request in a phase:
"replica killed" if it was in flight at the kill or started before recovery, else "rolling update" if it
overlapped the update, else "steady". Targets: no failure during the rolling update or in steady state;
during the kill, only streams in flight on the killed replica while it died may fail, each with a
connection error; 3 healthy replicas again within 30 s of the kill (--recovery-target).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx

PROMPTS = ["ROMEO:\n", "JULIET:\n", "First Citizen:\n", "KING RICHARD III:\n", "To be, or not to be"]


async def one_request(client: httpx.AsyncClient, seed: int, max_new_tokens: int) -> dict:
    body = {
        "prompt": PROMPTS[seed % len(PROMPTS)],
        "max_new_tokens": max_new_tokens,
        "temperature": 0.8,
        "top_k": 40,
        "seed": seed,
        "stream": True,
    }
    rec = {"seed": seed, "start": time.time(), "replica": None, "tokens": 0, "error": None, "kind": None}
    try:
        async with client.stream("POST", "/v1/generate", json=body) as r:
            rec["replica"] = r.headers.get("x-tinyllm-replica")
            if r.status_code != 200:
                rec["kind"], rec["error"] = "http", f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            else:
                final, done = None, False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        rec["kind"], rec["error"] = "error event", event["error"].get("message")
                    elif "finish_reason" in event:
                        final = event
                    elif "token" in event:
                        rec["tokens"] += 1
                if rec["error"] is None and not (
                    done and final and final["usage"]["completion_tokens"] == rec["tokens"]
                ):
                    rec["kind"], rec["error"] = (
                        "incomplete",
                        f"{rec['tokens']} tokens, final event {final}, [DONE] {done}",
                    )
    except httpx.TimeoutException as e:
        rec["kind"], rec["error"] = "timeout", f"{type(e).__name__}: {e}"
    except httpx.TransportError as e:
        rec["kind"], rec["error"] = "connection", f"{type(e).__name__}: {e}"
    rec["end"] = time.time()
    return rec


async def run(args) -> None:
    assert urlparse(args.url).hostname == "127.0.0.1", "the load goes to this machine only (127.0.0.1)"
    started, seeds = time.monotonic(), iter(range(args.max_requests))
    stop = Path(args.stop_file)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

    def go_on() -> bool:
        return not stop.exists() and time.monotonic() - started < args.max_seconds

    with open(args.out, "w") as out:
        async with httpx.AsyncClient(base_url=args.url, timeout=timeout, limits=limits) as client:

            async def worker():
                while go_on() and (seed := next(seeds, None)) is not None:
                    out.write(json.dumps(await one_request(client, seed, args.max_new_tokens)) + "\n")
                    out.flush()

            await asyncio.gather(*(worker() for _ in range(args.clients)))


def phase_of(rec: dict, ev: dict) -> str:
    if rec["start"] <= ev["recovered"] and rec["end"] >= ev["kill"]:
        return "replica killed"
    if rec["start"] <= ev["update_end"] and rec["end"] >= ev["update_start"]:
        return "rolling update"
    return "steady"


def report(args) -> int:
    recs = [json.loads(line) for line in Path(args.requests).read_text().splitlines()]
    ev = json.loads(Path(args.events).read_text())
    phases = ["steady", "rolling update", "replica killed"]
    by_phase = {p: [r for r in recs if phase_of(r, ev) == p] for p in phases}
    span = max(r["end"] for r in recs) - min(r["start"] for r in recs)
    print(
        f"{len(recs)} streaming requests over {span:.0f} s, {sum(r['tokens'] for r in recs)} tokens; "
        f"rolling update {ev['update_end'] - ev['update_start']:.1f} s; replica {ev['killed_replica']} killed, "
        f"3 healthy replicas again after {ev['recovered'] - ev['kill']:.1f} s"
    )
    print(f"{'phase':16} {'sent':>6} {'completed':>10} {'failed':>7}  failures")
    for p in phases:
        rs = by_phase[p]
        failed = [r for r in rs if r["error"]]
        kinds = Counter(f"{r['kind']} on {r['replica']}" for r in failed)
        print(f"{p:16} {len(rs):6} {len(rs) - len(failed):10} {len(failed):7}  {dict(kinds) or ''}")
    for r in (r for r in recs if r["error"]):
        since = f"{r['start'] - ev['kill']:+.1f}..{r['end'] - ev['kill']:+.1f} s"
        print(f"  failed: seed {r['seed']} on {r['replica']}, {since} from the kill: {r['error'][:160]}")

    problems = []
    for p in ("steady", "rolling update"):
        if n := sum(1 for r in by_phase[p] if r["error"]):
            problems.append(f"{n} failed during {p}")
    for r in by_phase["replica killed"]:
        if r["error"] and not (
            r["kind"] == "connection"
            and r["replica"] == ev["killed_replica"]
            and r["start"] < ev["killed"]
            and r["end"] > ev["kill"]
        ):
            problems.append(f"seed {r['seed']} failed on {r['replica']} ({r['kind']}), not a stream cut by the kill")
    if ev["recovered"] - ev["kill"] > args.recovery_target:
        problems.append(
            f"3 healthy replicas only after {ev['recovered'] - ev['kill']:.1f} s (target {args.recovery_target:.0f} s)"
        )
    if not by_phase["rolling update"] or not by_phase["replica killed"]:
        problems.append("no load during a phase")
    for problem in problems:
        print(f"MISSED: {problem}")
    return 1 if problems else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="stream until the stop file appears")
    r.add_argument("url")
    r.add_argument("out")
    r.add_argument("--stop-file", required=True)
    r.add_argument("--clients", type=int, default=6)
    r.add_argument("--max-new-tokens", type=int, default=64)
    r.add_argument("--max-seconds", type=float, default=300.0)
    r.add_argument("--max-requests", type=int, default=20000)
    r.add_argument("--timeout", type=float, default=60.0, help="seconds without a byte before a request fails")
    s = sub.add_parser("report", help="per-phase counts; exit 1 if a target is missed")
    s.add_argument("requests")
    s.add_argument("events")
    s.add_argument("--recovery-target", type=float, default=30.0, help="seconds from the kill to 3 healthy replicas")
    args = p.parse_args(argv)
    if args.command == "run":
        asyncio.run(run(args))
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
