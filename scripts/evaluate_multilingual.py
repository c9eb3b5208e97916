"""Evaluate a checkpoint on the multilingual corpus's held-out text, language by language.

    python scripts/evaluate_multilingual.py --checkpoint checkpoints/multilingual --corpus data/multilingual \
        --compare checkpoints/shakespeare --json docs/training-logs/multilingual-eval.json

Three measurements, printed as Markdown tables (and written as JSON):

1. Bits per byte on every language's whole val/<lang>.txt, next to `xz -9` and `zstd -19` (8 x compressed
   size / size) of the same bytes. The model reads the file in windows of its context length; every byte but
   the file's first is predicted exactly once. With --stride S < context, windows start every S bytes and
   only their last S predictions are scored, so each byte (after the first window) sees at least
   context - S bytes before it; the default, S = context, is non-overlapping windows.
2. UTF-8 validity: from each language's held-out text, --samples prompts (the first 64 bytes of documents
   spread evenly over the file, cut to whole characters); 1,000 bytes generated from each at temperature
   0.8 with seed i for prompt i, once with the server's default `utf8: "valid"` and once with `"any"` (the raw
   model). When the context fills, generation continues from the last half-context of bytes (from the first
   whole character in it). A sample is valid when its bytes decode as UTF-8, allowing only the last
   character to be cut short by the length limit (with "valid" none is: near the limit only characters that
   fit are started).
3. Heads: model/heads.py's summary on 256-byte passages (or the shorter context) of held-out text
   (--passages per language, whole characters), for this checkpoint and the --compare one: how much
   attention continuation bytes give to the earlier bytes of their own character, against a
   uniform-attention head on the same passages.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import TinyLLM
from model.heads import label_heads, summarize_heads
from model.tokenizer import char_spans

LN2 = math.log(2)
PROMPT_BYTES = 64
SAMPLE_BYTES = 1000
TEMPERATURE = 0.8
PASSAGE_BYTES = 256


# ---------------------------------------------------------------- bits per byte


@torch.inference_mode()
def bits_per_byte(llm: TinyLLM, data: bytes, stride: int, batch: int = 16) -> float:
    """Bits per byte over every byte of `data` but the first (see the module doc for the windows)."""
    ctx = llm.config.context_length
    assert 0 < stride <= ctx, f"stride must be in 1..{ctx}"
    ids = torch.tensor(list(data), dtype=torch.long)
    n = len(data)
    # window w covers inputs [start, start + length) and scores the targets at positions scored_from.. of it
    windows, start = [], 0
    while True:
        length = min(ctx, n - 1 - start)
        first_scored = 0 if start == 0 else ctx - stride
        windows.append((start, length, first_scored))
        if start + length >= n - 1:
            break
        start += stride
    total, scored = 0.0, 0
    for i in range(0, len(windows), batch):
        group = windows[i : i + batch]
        for length in sorted({w[1] for w in group}):  # windows of one length go together (only the last is short)
            same = [w for w in group if w[1] == length]
            x = torch.stack([ids[s : s + length] for s, _, _ in same]).to(llm.device)
            y = torch.stack([ids[s + 1 : s + 1 + length] for s, _, _ in same]).to(llm.device)
            logits, _ = llm.model(x)
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, T)
            for row, (_, _, first_scored) in enumerate(same):
                total += nll[row, first_scored:].sum().item()
                scored += length - first_scored
    assert scored == n - 1, f"scored {scored} of {n - 1} bytes"
    return total / scored / LN2


def compressed_bits_per_byte(data: bytes, command: list[str]) -> float:
    out = subprocess.run(command, input=data, capture_output=True, check=True).stdout
    return 8 * len(out) / len(data)


def tool_version(command: str) -> str:
    return subprocess.run([command, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


# ---------------------------------------------------------------- generation


def document_starts(data: bytes) -> list[int]:
    return [0] + [i + 2 for i in range(len(data) - 2) if data[i : i + 2] == b"\n\n" and data[i + 2 : i + 3] != b"\n"]


def whole_characters(data: bytes, limit: int) -> bytes:
    """The longest prefix of data, at most limit bytes, that ends on a character boundary."""
    end = 0
    for _, stop in char_spans(data[: limit + 4]):
        if stop > limit:
            break
        end = stop
    return data[:end]


def spread(items: list, k: int) -> list:
    return [items[i] for i in np.linspace(0, len(items) - 1, k).astype(int)] if len(items) > k else list(items)


def prompts_of(data: bytes, k: int, length: int) -> list[bytes]:
    starts = [s for s in document_starts(data) if s + length <= len(data)]
    return [whole_characters(data[s:], length) for s in spread(starts, k)]


def generate_bytes(llm: TinyLLM, prompt: bytes, n: int, seed: int, utf8: str = "valid") -> bytes:
    """n bytes after the prompt, sliding the context window forward by half when it fills."""
    ctx = llm.config.context_length
    text, out, part = prompt, b"", 0
    while len(out) < n:
        window = text[-(ctx // 2) :] if len(text) >= ctx else text
        while window and 0x80 <= window[0] < 0xC0:  # start on a character
            window = window[1:]
        g = llm.generate(
            window, max_new_tokens=n - len(out), temperature=TEMPERATURE, seed=seed * 1000 + part, utf8=utf8
        )
        new = bytes(g.tokens)
        out += new
        text += new
        part += 1
    return out[:n]


def invalid_sequences(data: bytes) -> int:
    """How many invalid UTF-8 sequences data holds (each one a U+FFFD when decoded), not counting a last
    character cut short by the length limit."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False).count("\ufffd")


def is_valid_utf8(data: bytes) -> bool:
    """Valid UTF-8, except that the last character may be cut short."""
    return invalid_sequences(data) == 0


# ---------------------------------------------------------------- heads


def passages_of(data: bytes, k: int, length: int) -> list[bytes]:
    return [p for p in prompts_of(data, k, length) if len(p) > length // 2]


def head_metrics(llm: TinyLLM, passages: list[bytes]) -> dict[str, np.ndarray]:
    """summarize_heads averaged over the passages (per metric, over the passages where it is defined)."""
    per_text = [summarize_heads(llm.attention(p), list(p)) for p in passages]
    return {m: np.nanmean(np.stack([s[m] for s in per_text]), axis=0) for m in per_text[0]}


def uniform_same_character(passages: list[bytes]) -> float:
    """same_character of a head that spreads its attention evenly over all the bytes it can see."""
    values = []
    for p in passages:
        T = len(p)
        a = np.tril(np.ones((1, 1, T, T)))
        values.append(summarize_heads(a / a.sum(-1, keepdims=True), list(p))["same_character"][0, 0])
    return float(np.nanmean(values))


# ---------------------------------------------------------------- report


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/multilingual"))
    p.add_argument("--corpus", type=Path, default=Path("data/multilingual"), help="build_corpus.py's output")
    p.add_argument("--compare", type=Path, help="a second checkpoint for the heads comparison")
    p.add_argument("--stride", type=int, help="window stride in bytes (default: the context, non-overlapping)")
    p.add_argument("--samples", type=int, default=8, help="generated samples per language")
    p.add_argument("--passages", type=int, default=16, help="passages per language for the heads")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--skip", nargs="*", default=[], choices=["bpb", "utf8", "heads"])
    args = p.parse_args(argv)

    llm = TinyLLM.load(args.checkpoint, device="cpu")
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    langs = list(manifest["languages"])
    val = {lang: (args.corpus / "val" / f"{lang}.txt").read_bytes() for lang in langs}
    for lang in langs:
        assert manifest["files"][f"val/{lang}.txt"]["bytes"] == len(val[lang]), f"val/{lang}.txt differs from manifest"
    stride = args.stride or llm.config.context_length
    results = {
        "checkpoint": str(args.checkpoint),
        "corpus_manifest_files": manifest["files"],
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "stride": stride,
        "context_length": llm.config.context_length,
    }
    started = time.time()

    if "bpb" not in args.skip:
        results["xz"], results["zstd"] = tool_version("xz"), tool_version("zstd")
        rows, out = [], {}
        for lang in langs:
            model = bits_per_byte(llm, val[lang], stride)
            xz = compressed_bits_per_byte(val[lang], ["xz", "-9", "-T1", "-c"])
            zstd = compressed_bits_per_byte(val[lang], ["zstd", "-19", "-c"])
            out[lang] = {"bytes": len(val[lang]), "model": model, "xz": xz, "zstd": zstd}
            best = min(xz, zstd)
            rows.append(
                [
                    lang,
                    f"{len(val[lang]):,}",
                    f"**{model:.3f}**",
                    f"{xz:.3f}",
                    f"{zstd:.3f}",
                    f"{best - model:+.3f} ({100 * (best - model) / best:+.1f}%)",
                    "yes" if model < best else "**no**",
                ]
            )
        results["bits_per_byte"] = out
        print(
            table(
                [
                    "language",
                    "held-out bytes",
                    "model",
                    "xz -9",
                    "zstd -19",
                    "margin vs better compressor",
                    "beats both",
                ],
                rows,
            )
            + "\n"
        )

    if "utf8" not in args.skip:
        rows, results["utf8"] = {lang: [lang] for lang in langs}, {}
        for mode in ("valid", "any"):
            out = results["utf8"][mode] = {}
            for lang in langs:
                samples = [
                    generate_bytes(llm, prompt, SAMPLE_BYTES, seed, mode)
                    for seed, prompt in enumerate(prompts_of(val[lang], args.samples, PROMPT_BYTES))
                ]
                bad = [invalid_sequences(s) for s in samples]
                out[lang] = {
                    "samples": len(samples),
                    "valid": bad.count(0),
                    "invalid_sequences": sum(bad),
                    "texts": [s.decode("utf-8", errors="replace") for s in samples],
                }
                rows[lang] += [f"{bad.count(0)} / {len(samples)}", sum(bad)]
        headers = [
            "language",
            'valid samples, "valid"',
            "invalid sequences",
            'valid samples, "any"',
            "invalid sequences",
        ]
        print(table(headers, list(rows.values())))
        for mode, out in results["utf8"].items():
            total = sum(v["valid"] for v in out.values()), sum(v["samples"] for v in out.values())
            print(f"\nutf8 {mode!r}: {total[0]} of {total[1]} samples valid in all languages")
        print()

    if "heads" not in args.skip:
        models = {args.checkpoint.name: llm}
        if args.compare:
            models[args.compare.name] = TinyLLM.load(args.compare, device="cpu")
        length = min([PASSAGE_BYTES] + [m.config.context_length for m in models.values()])
        passages = [p for lang in langs for p in passages_of(val[lang], args.passages, length)]
        out = {"passages": len(passages), "uniform_head_same_character": uniform_same_character(passages)}
        for name, m in models.items():
            metrics = head_metrics(m, passages)
            sc = metrics["same_character"]
            out[name] = {
                "metrics": {k: v.round(4).tolist() for k, v in metrics.items()},
                "labels": label_heads(metrics),
                "same_character_mean": float(sc.mean()),
                "same_character_max": float(sc.max()),
                "same_character_best_head": [int(i) for i in np.unravel_index(sc.argmax(), sc.shape)],
            }
            print(
                f"{name}: same_character by layer (rows) and head (columns), mean {sc.mean():.3f}, max {sc.max():.3f}"
            )
            print(
                table(
                    ["layer"] + [f"h{h}" for h in range(sc.shape[1])],
                    [[layer] + [f"{v:.2f}" for v in row] for layer, row in enumerate(sc)],
                )
            )
            print(
                table(
                    ["layer"] + [f"h{h}" for h in range(sc.shape[1])],
                    [[layer] + [lab or "–" for lab in row] for layer, row in enumerate(out[name]["labels"])],
                )
            )
            print()
        print(f"uniform head on the same passages: same_character {out['uniform_head_same_character']:.3f}")
        results["heads"] = out

    results["wall_time_s"] = round(time.time() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
