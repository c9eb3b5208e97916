"""What each `tinyllm` command does: build the request from the parsed command line, print the answer.

The inspection commands' tables are drawn by server/cli_inspect.py; the command line itself is server/cli.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from server.cli_client import EXIT_SERVER_ERROR, CLIError, check, client, request
from server.cli_inspect import ablation_lines, attribution_lines, explain_table, lens_table


def cmd_generate(args) -> None:
    body = {
        "prompt": read_text(args.text),
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "stop": args.stop,
        "stream": True,
        **chosen(args),
    }
    if args.seed is not None:
        body["seed"] = args.seed
    if args.heads_off:
        body["heads_off"] = args.heads_off
    out = sys.stdout
    with client(args) as c, c.stream("POST", "/v1/generate", json=body) as response:
        check(response)
        if args.echo:
            out.write(body["prompt"])
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise CLIError(f"{event['error']['message']} ({event['error']['type']})", EXIT_SERVER_ERROR)
            if "token" in event:
                out.write(event["text"])
                out.flush()
    out.write("\n")


def cmd_attention(args) -> None:
    text = read_text(args.text)
    one_map = args.png or not args.npy
    layer = args.layer if args.layer is not None or not one_map else 0
    head = args.head if args.head is not None or not one_map else 0
    body = {
        "text": text,
        "layers": None if layer is None else [layer],
        "heads": None if head is None else [head],
        **chosen(args),
    }
    if args.png:
        save(args.png, request(args, "POST", "/v1/attention", json={**body, "format": "png"}).content)
    if args.npy:
        save(args.npy, request(args, "POST", "/v1/attention", json={**body, "format": "npy"}).content)
    if args.png or args.npy:
        return
    result = request(args, "POST", "/v1/attention", json=body).json()
    print(attention_summary(result["tokens"], result["attention"][0][0], layer, head))


def attention_summary(tokens: list[dict], rows: list[list[float]], layer: int, head: int) -> str:
    """One line per byte: the byte it attends to most, and how strongly."""
    labels = [shown(t["text"]) for t in tokens]
    width = max(map(len, labels))
    lines = [f"layer {layer}, head {head}: each byte -> the byte it attends to most"]
    for q, row in enumerate(rows):
        k = max(range(q + 1), key=lambda j: row[j])
        lines.append(f"{q:4d} {labels[q]:>{width}} -> {k:4d} {labels[k]:<{width}} {row[k]:.3f}")
    return "\n".join(lines)


def cmd_model(args) -> None:
    print(json.dumps(request(args, "GET", "/v1/model", params=chosen(args)).json(), indent=2))


def cmd_tokenize(args) -> None:
    result = request(args, "POST", "/v1/tokenize", json={"text": read_text(args.text)}).json()
    print(f"{result['count']} bytes")
    for i, t in enumerate(result["tokens"]):
        print(f"{i:4d} {t['id']:3d} {shown(t['text']):6} chars [{t['start']}, {t['end']})")


def cmd_explain(args) -> None:
    text = read_text(args.text)
    query = args.query
    if query is None:  # the last byte, or the last character
        query = (len(text) if args.character else len(text.encode("utf-8"))) - 1
    body = {"text": text, "layer": args.layer, "head": args.head, "query": query, **switched_off(args)}
    if args.character:
        body["query_unit"] = "character"
    print(explain_table(request(args, "POST", "/v1/attention/explain", json=body).json()))


def cmd_lens(args) -> None:
    body = {"text": read_text(args.text), "top_k": 1, **switched_off(args)}
    print(lens_table(request(args, "POST", "/v1/lens", json=body).json()))


def cmd_attribute(args) -> None:
    body = {"text": read_text(args.text), "position": args.position, "top": args.top, **switched_off(args)}
    if args.target is not None:
        body["target"] = args.target
    print(attribution_lines(request(args, "POST", "/v1/attribute", json=body).json()))


def cmd_ablate(args) -> None:
    body = {"text": read_text(args.text), **switched_off(args)}
    print(ablation_lines(request(args, "POST", "/v1/ablate", json=body).json()))


def switched_off(args) -> dict:
    """The fields every inspection request shares: the model, the heads switched off and how."""
    return {"heads_off": args.heads_off, "ablation": args.ablation, **chosen(args)}


def chosen(args) -> dict:
    """{"model": ...} when --model names one; the server's first model otherwise."""
    return {} if args.model is None else {"model": args.model}


def shown(label: str) -> str:
    """A byte's label as printed: the server's (\\n, \\xe2, ...), with a space made visible."""
    return "\u2423" if label == " " else label


def read_text(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


def save(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)
    print(f"wrote {path} ({len(data):,} bytes)", file=sys.stderr)
