"""tinyllm-atlas CHECKPOINT [--data FILE ...] (or `tinyllm atlas ...`): compute a checkpoint's attention atlas
(model/atlas.py) and write it next to the checkpoint.

Without --data the corpus is the checkpoint's own held-out split, found from its training.json: the files recorded
with split "val", or else the last 10% of each training file (model/train_data.py's cut), each checked against its
recorded sha256. A recorded path is looked for as written, then under each folder above the checkpoint (training
records paths relative to where it ran).

It runs here, not in a server: `tinyllm atlas` hands its arguments to this module (and only then imports torch);
every other `tinyllm` command is an HTTP client.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from model import atlas, checkpoint

HELD_OUT_SHARE = 0.1  # model/train_data.py keeps the last 10% of each file for validation without --val-data


class AtlasError(Exception):
    """A problem with the command's input, said in one line."""


def find_file(recorded: str, folder: Path) -> Path | None:
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [path, *(parent / path for parent in folder.resolve().parents)]
    return next((p for p in candidates if p.is_file()), None)


def held_out(folder: Path) -> atlas.Corpus:
    """The checkpoint's held-out split, from the data its training.json records."""
    records = checkpoint.load_training(folder).get("data") or []
    if not records:
        raise AtlasError(f"{folder}: training.json records no data; name the corpus with --data FILE")
    val = [r for r in records if r.get("split") == "val"]
    parts, sources = [], []
    for r in val or records:
        path = find_file(r["path"], folder)
        if path is None:
            raise AtlasError(f"{r['path']} (recorded in {folder}/training.json) is not here; give it with --data")
        data = np.fromfile(path, dtype=np.uint8)
        if hashlib.sha256(data).hexdigest() != r.get("sha256", hashlib.sha256(data).hexdigest()):
            raise AtlasError(f"{path} is not the file the model was trained on (its sha256 differs)")
        part = "all (its validation file)" if val else f"last {HELD_OUT_SHARE:.0%}"
        if not val:
            data = data[int(data.size * (1 - HELD_OUT_SHARE)) :]
        parts.append(data)
        sources.append({"path": str(path.resolve()), "bytes": int(data.size), "sha256": r.get("sha256"), "part": part})
    return atlas.Corpus(np.concatenate(parts), sources)


def given_files(paths: list[str]) -> atlas.Corpus:
    parts, sources = [], []
    for p in map(Path, paths):
        if not p.is_file():
            raise AtlasError(f"--data: no file {p}")
        data = np.fromfile(p, dtype=np.uint8)
        parts.append(data)
        sources.append({"path": str(p), "bytes": int(data.size), "sha256": hashlib.sha256(data).hexdigest()})
    corpus = atlas.Corpus(np.concatenate(parts), sources)
    if corpus.data.size < 2:
        raise AtlasError(f"--data: the corpus has {corpus.data.size} bytes; an atlas needs at least 2")
    return corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tinyllm-atlas", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", nargs="+", help="corpus files (default: the checkpoint's held-out split)")
    p.add_argument("--max-bytes", type=int, default=None, help="only the corpus's first N bytes")
    p.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    try:
        corpus = given_files(args.data) if args.data else held_out(args.checkpoint)
        if args.max_bytes:
            corpus.data = corpus.data[: args.max_bytes]
        if args.threads:
            torch.set_num_threads(args.threads)
        model = checkpoint.load_model(args.checkpoint).eval()
        result = atlas.compute(model, corpus, batch=args.batch)
    except (AtlasError, checkpoint.CheckpointError, ValueError) as e:
        print(f"tinyllm-atlas: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinyllm-atlas: interrupted; nothing written", file=sys.stderr)
        return 130
    atlas.save(args.checkpoint, result, checkpoint.content_sha256(args.checkpoint))
    r = result["record"]
    print(
        f"wrote {args.checkpoint}/{atlas.ATLAS_TENSORS} and {atlas.ATLAS_JSON}: {r['bytes']} bytes, "
        f"{r['windows']} windows, {len(result['tensors']['pairs'])} byte pairs, {r['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
