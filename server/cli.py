"""`tinyllm`: a command-line client for a running TinyLLM server, on httpx.

    tinyllm generate "ROMEO:" --max-new-tokens 200 --temperature 0.8 --seed 1   # streams to the terminal
    tinyllm generate "ROMEO:" --heads-off 0.4 --heads-off 0.3                   # without some heads
    tinyllm attention "To be, or not to be" --layer 0 --head 1 --png attn.png
    tinyllm attention "To be" --layer 0 --head 1          # per byte: the byte it attends to most
    tinyllm model
    tinyllm tokenize "Hé 🙂"
    tinyllm explain "The cat sat on the mat" --layer 2 --head 1  # one head step by step, for the last byte
    tinyllm lens "The cat sat on the mat"                        # what it would say next after each layer
    tinyllm attribute "The cat sat on the mat" --position 20     # each head's push on the next byte's logit
    tinyllm ablate "The cat sat on the mat" --heads-off 2.1      # the loss without some heads
    tinyllm explain "猫はマット" --layer 1 --head 0 --model multilingual  # any command: --model picks a served model
    tinyllm atlas checkpoints/shakespeare [--data FILE ...]       # compute the attention atlas (no server; torch)

--url (TINYLLM_URL, default http://127.0.0.1:8000) and --api-key (TINYLLM_API_KEY) choose the server.
Exit codes: 0 done, 1 an error (the server's message, or a file that cannot be written), 2 a bad command
line, 3 the server cannot be reached. Errors are one line on standard error.

This file is the command line; what each command does is server/cli_commands.py, talking to the server
server/cli_client.py, the inspection commands' tables server/cli_inspect.py.
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx

from server.cli_client import DEFAULT_URL, EXIT_SERVER_ERROR, EXIT_UNREACHABLE, CLIError
from server.cli_commands import (
    cmd_ablate,
    cmd_attention,
    cmd_attribute,
    cmd_explain,
    cmd_generate,
    cmd_lens,
    cmd_model,
    cmd_tokenize,
)

# ---------------------------------------------------------------- argument types


def head_pair(value: str) -> list[int]:
    """LAYER.HEAD (2.1) as [layer, head]."""
    try:
        layer, head = value.split(".")
        return [int(layer), int(head)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not LAYER.HEAD, e.g. 2.1") from None


def byte_value(value: str) -> int:
    """A target byte: a number (116, 0x74) or a one-byte character (t)."""
    if len(value.encode("utf-8")) == 1 and not value.isdigit():
        return value.encode("utf-8")[0]
    try:
        return int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a byte value nor a one-byte character") from None


# ---------------------------------------------------------------- the command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyllm", description="Talk to a running TinyLLM server.")
    p.add_argument(
        "--url",
        default=os.environ.get("TINYLLM_URL", DEFAULT_URL),
        help=f"server address (env TINYLLM_URL, default {DEFAULT_URL})",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("TINYLLM_API_KEY"),
        help="bearer token, when the server needs one (env TINYLLM_API_KEY)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server (default 300)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    add_inspection_commands(sub)
    return p


def model_option() -> argparse.ArgumentParser:
    """--model, which every command that reads a model takes."""
    chooses = argparse.ArgumentParser(add_help=False)
    chooses.add_argument("--model", help="a model id from GET /v1/models (default: the first one served)")
    return chooses


def add_commands(sub) -> None:
    """generate, attention, model, tokenize."""
    chooses = model_option()
    g = sub.add_parser("generate", parents=[chooses], help="continue a text, streaming the bytes as they come")
    g.add_argument("text", help="the prompt (- reads standard input)")
    g.add_argument("--max-new-tokens", type=int, default=128, help="bytes to generate at most (default 128)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely bytes (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--seed", type=int, help="same seed and parameters give the same text")
    g.add_argument("--stop", action="append", default=[], help="a string that ends generation (repeatable)")
    g.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    g.add_argument(
        "--heads-off", type=head_pair, action="append", default=[], metavar="L.H", help="switch a head off (repeatable)"
    )
    g.set_defaults(run=cmd_generate)

    a = sub.add_parser(
        "attention",
        parents=[chooses],
        help="attention of one layer and head: a summary, a PNG heatmap, or a .npy array",
    )
    a.add_argument("text", help="the text to analyse (- reads standard input)")
    a.add_argument("--layer", type=int, help="layer index (default 0; with only --npy, all layers)")
    a.add_argument("--head", type=int, help="head index (default 0; with only --npy, all heads)")
    a.add_argument("--png", metavar="FILE", help="write a heatmap PNG of the map")
    a.add_argument("--npy", metavar="FILE", help="write the maps as a .npy array (layers, heads, T, T)")
    a.set_defaults(run=cmd_attention)

    m = sub.add_parser("model", parents=[chooses], help="print the served model's config and limits as JSON")
    m.set_defaults(run=cmd_model)

    t = sub.add_parser("tokenize", help="show the byte tokens of a text")
    t.add_argument("text", help="the text (- reads standard input)")
    t.set_defaults(run=cmd_tokenize)


def add_inspection_commands(sub) -> None:
    """explain, lens, attribute, ablate: a text, and the heads to switch off while looking."""
    inspect = argparse.ArgumentParser(add_help=False, parents=[model_option()])  # what every one of them takes
    inspect.add_argument("text", help="the text (- reads standard input)")
    inspect.add_argument(
        "--heads-off", type=head_pair, action="append", default=[], metavar="L.H", help="switch a head off (repeatable)"
    )
    # model.trace.ABLATIONS, written out: the command line is an HTTP client and does not import torch
    inspect.add_argument(
        "--ablation",
        choices=["zero", "mean"],
        default="zero",
        help="what replaces a head's output: zeros, or its mean over the text (then each byte's output depends on "
        "the bytes after it too)",
    )

    e = sub.add_parser("explain", parents=[inspect], help="one head's attention for one byte, step by step")
    e.add_argument("--layer", type=int, required=True, help="layer index")
    e.add_argument("--head", type=int, required=True, help="head index")
    e.add_argument("--query", type=int, help="the querying byte's index (default: the last)")
    e.add_argument("--character", action="store_true", help="--query counts characters, not bytes")
    e.set_defaults(run=cmd_explain)

    lens = sub.add_parser("lens", parents=[inspect], help="the logit lens: what the model would say after each layer")
    lens.set_defaults(run=cmd_lens)

    at = sub.add_parser("attribute", parents=[inspect], help="each head's and MLP's push on a next-byte logit")
    at.add_argument("--position", type=int, required=True, help="the byte after which the next byte is predicted")
    at.add_argument("--target", type=byte_value, help="the byte whose logit is split (default: the next one)")
    at.add_argument("--top", type=int, default=10, help="pushes to list (default 10)")
    at.set_defaults(run=cmd_attribute)

    ab = sub.add_parser("ablate", parents=[inspect], help="the loss per byte with some heads switched off")
    ab.set_defaults(run=cmd_ablate)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["atlas"]:  # computes in this process (model/atlas_cli.py): torch is imported for it alone
        from model.atlas_cli import main as atlas_main

        sys.exit(atlas_main(argv[1:]))
    args = parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?"
    try:
        args.run(args)
    except CLIError as e:
        print(f"tinyllm: error: {e}", file=sys.stderr)
        sys.exit(e.code)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        print(
            f"tinyllm: error: cannot reach the server at {args.url} (is it running? start it with tinyllm-serve)",
            file=sys.stderr,
        )
        sys.exit(EXIT_UNREACHABLE)
    except httpx.TimeoutException:
        print(f"tinyllm: error: the server at {args.url} did not answer within {args.timeout:g}s", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
    except httpx.HTTPError as e:
        print(f"tinyllm: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
    except OSError as e:  # writing the output file
        print(f"tinyllm: error: {e}", file=sys.stderr)
        sys.exit(EXIT_SERVER_ERROR)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
