"""scripts/swarm_load.py, the Swarm test's load generator and report, against a real server.

The Swarm test runs only in CI's Docker stage; this keeps its client in step with the server's stream format
(a changed event would otherwise show up there as failed requests) and checks how the report judges phases.
"""

from __future__ import annotations

import json
import subprocess
import sys

from server.process import ROOT, running_server

SCRIPT = ROOT / "scripts" / "swarm_load.py"


def load(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_streams_complete_and_the_report_judges_phases(tiny_checkpoint, tmp_path):
    out = tmp_path / "requests.jsonl"
    with running_server(tiny_checkpoint) as server:
        r = load(
            "run",
            server.url,
            out,
            "--stop-file",
            tmp_path / "stop",
            "--clients",
            3,
            "--max-new-tokens",
            8,
            "--max-seconds",
            3,
        )
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) >= 3
    # 8 bytes, or up to 3 fewer where a character would not have fitted (utf8 "valid")
    assert all(rec["error"] is None and 5 <= rec["tokens"] <= 8 and rec["end"] > rec["start"] for rec in recs), recs[:3]

    # Phases cut from the real run: an update over the first third, a kill in the last third.
    t0, t1 = min(rec["start"] for rec in recs), max(rec["end"] for rec in recs)
    third = (t1 - t0) / 3
    events = {
        "update_start": t0,
        "update_end": t0 + third,
        "kill": t1 - third,
        "killed": t1 - third + 0.1,
        "killed_replica": "10.0.0.9",
        "recovered": t1 - third + 5,
    }
    (tmp_path / "events.json").write_text(json.dumps(events))
    r = load("report", out, tmp_path / "events.json")
    assert r.returncode == 0, r.stdout
    assert "MISSED" not in r.stdout and f"{len(recs)} streaming requests" in r.stdout

    # A stream cut on the killed replica while it died is allowed; any other failure is not.
    in_flight_at_kill = next(rec for rec in recs if rec["start"] < events["kill"] < rec["end"])
    in_flight_at_kill.update(
        error="RemoteProtocolError: incomplete chunked read", kind="connection", replica="10.0.0.9"
    )
    out.write_text("".join(json.dumps(rec) + "\n" for rec in recs))
    r = load("report", out, tmp_path / "events.json")
    assert r.returncode == 0 and "failed: seed" in r.stdout, r.stdout

    in_flight_at_kill["replica"] = "10.0.0.7"
    out.write_text("".join(json.dumps(rec) + "\n" for rec in recs))
    r = load("report", out, tmp_path / "events.json")
    assert r.returncode == 1 and "not a stream cut by the kill" in r.stdout, r.stdout


def test_only_this_machine(tmp_path):
    r = load("run", "http://example.com:8000", tmp_path / "out", "--stop-file", tmp_path / "stop")
    assert r.returncode != 0 and "127.0.0.1" in r.stderr
