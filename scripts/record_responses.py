"""Record what the shipped server answers to a set of requests covering every route, then replay the record against
another checkout and list every answer that is not byte for byte the same: the check that a refactor changes nothing
for users.

    python scripts/record_responses.py record /tmp/before.json             # this checkout's server
    python scripts/record_responses.py replay /tmp/before.json [--root DIR] # DIR's server, the same requests

The requests: every operation of the server's OpenAPI schema with each example its schema gives (the request bodies'
examples, the parameters'), on every served model, plus the page, its scripts, generation in every mode (greedy,
seeded, streamed, stops, penalties, logprobs) and error answers. Answers are compared whole (status, content type,
body); a completion's id and creation time and a generation's timing, which differ on every call, are masked.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from server.process import ROOT, running_server

# what differs on every call: a completion's id and creation time, a generation's timing
VOLATILE = re.compile(rb'"id":"cmpl-[^"]*"|"created":\d+|"timing":\{[^}]*\}')
GENERATE = [
    {"prompt": "ROMEO:", "max_new_tokens": 40, "temperature": 0},
    {"prompt": "ROMEO:", "max_new_tokens": 40, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 7},
    {"prompt": "Der Himmel ", "max_new_tokens": 30, "seed": 3, "repetition_penalty": 1.3, "presence_penalty": 0.5},
    {"prompt": "To be", "max_new_tokens": 30, "temperature": 0, "stop": [" the"], "logprobs": 3},
    {"prompt": "Grüße, 世界 🙂", "max_new_tokens": 20, "temperature": 0, "stream": True},
    {"prompt": "ab", "max_new_tokens": 12, "temperature": 0, "utf8": "any", "stream": True, "logprobs": 2},
]
COMPLETIONS = [
    {"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0, "logprobs": 2, "echo": True},
    {"prompt": ["a", "b"], "max_tokens": 8, "temperature": 0.9, "seed": 1, "n": 2},
    {"prompt": "JULIET:", "max_tokens": 16, "temperature": 0, "stream": True},
]
STATIC = ["/", "/docs", "/static/main.js", "/static/style.css", "/static/index.html"]
ERRORS = [
    ("POST", "/v1/generate", {"prompt": "x", "max_new_tokens": 0}),
    ("POST", "/v1/generate", {"prompt": "x", "model": "nope"}),
    ("POST", "/v1/attention", {"text": "ab", "layers": [99]}),
    ("GET", "/v1/nothing", None),
    ("PUT", "/v1/generate", None),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": -1}),
]


def requests(url: str) -> list[dict]:
    """The request set, read from the running server's own schema."""
    spec = httpx.get(f"{url}/openapi.json").json()
    models = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    out = [{"method": "GET", "path": "/openapi.json"}] + [{"method": "GET", "path": p} for p in STATIC]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            takes_model = any(p["name"] == "model" for p in op.get("parameters", []))
            for model, (query, body) in itertools.product(models, examples(spec, op)):
                query = {**query, "model": model} if takes_model else query
                if body is not None:
                    body = {**body, "model": model} if "model" in schema_of(spec, op)["properties"] else body
                concrete = path.replace("{model}", model)
                out.append({"method": method.upper(), "path": concrete, "query": query, "body": body})
    for path, bodies in (("/v1/generate", GENERATE), ("/v1/completions", COMPLETIONS)):
        out += [{"method": "POST", "path": path, "body": {**b, "model": m}} for b in bodies for m in models]
    out += [{"method": m, "path": p, "body": b} for m, p, b in ERRORS]
    return out


def schema_of(spec: dict, op: dict) -> dict:
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]


def examples(spec: dict, op: dict) -> list[tuple[dict, dict | None]]:
    """(query, body) pairs: the body schema's examples, or the parameters' first examples; at least one pair."""
    query = {p["name"]: p["schema"]["examples"][0] for p in op.get("parameters", []) if p["schema"].get("examples")}
    query.pop("model", None)
    if "requestBody" not in op:
        return [(query, None)]
    return [(query, body) for body in schema_of(spec, op).get("examples", [{}])]


def answer(client: httpx.Client, request: dict) -> dict:
    r = client.request(
        request["method"], request["path"], params=request.get("query") or None, json=request.get("body"), timeout=300
    )
    body = VOLATILE.sub(lambda m: m.group(0).split(b":", 1)[0] + b':"*"', r.content)
    return {"status": r.status_code, "type": r.headers.get("content-type"), "body": body.decode("latin-1")}


def record(out: Path) -> None:
    with running_server(None) as server, httpx.Client(base_url=server.url) as client:
        asked = requests(server.url)
        out.write_text(json.dumps([{"request": q, "answer": answer(client, q)} for q in asked]))
    print(f"{out}: {len(asked)} answers recorded")


def replay(record_file: Path, root: Path) -> int:
    recorded = json.loads(record_file.read_text())
    differ = []
    with running_server(None, root=root) as server, httpx.Client(base_url=server.url) as client:
        for entry in recorded:
            if answer(client, entry["request"]) != entry["answer"]:
                differ.append(entry["request"])
    print(f"{len(recorded) - len(differ)} of {len(recorded)} answers byte-identical")
    for request in differ:
        print("  differs:", request["method"], request["path"], json.dumps(request.get("body"))[:120])
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["record", "replay"])
    parser.add_argument("file", type=Path)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose server replays (default: this one)")
    args = parser.parse_args()
    sys.exit(record(args.file) if args.action == "record" else replay(args.file, args.root))


if __name__ == "__main__":
    main()
