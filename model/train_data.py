"""The training bytes: files and folders read whole, a validation split, and random batches of windows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from model.train_setup import TrainError


def list_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise TrainError(f"data path not found: {p}")
    if not files:
        raise TrainError(f"no files under {', '.join(paths)}")
    return files


def read_bytes(f: Path) -> np.ndarray:
    data = np.fromfile(f, dtype=np.uint8)
    if data.size == 0:
        raise TrainError(f"data file is empty: {f}")
    return data


def load_data(args) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Train and validation bytes, and a record (name, bytes, sha256) of every file read."""
    train, val, record = [], [], []
    for f in list_files(args.data):
        data = read_bytes(f)
        record.append({"path": str(f), "bytes": int(data.size), "sha256": hashlib.sha256(data).hexdigest()})
        if args.val_data:
            train.append(data)
        else:
            cut = int(data.size * 0.9)
            train.append(data[:cut])
            val.append(data[cut:])
    for f in list_files(args.val_data or []) if args.val_data else []:
        data = read_bytes(f)
        record.append(
            {"path": str(f), "bytes": int(data.size), "sha256": hashlib.sha256(data).hexdigest(), "split": "val"}
        )
        val.append(data)
    train, val = np.concatenate(train), np.concatenate(val)
    need = args.context_length + 1
    for name, split in (("training", train), ("validation", val)):
        if split.size < need:
            raise TrainError(
                f"context length {args.context_length} is larger than the {name} data "
                f"({split.size} bytes); use a shorter --context-length or more data"
            )
    return train, val, record


def get_batch(data: np.ndarray, batch: int, ctx: int, rng: np.random.Generator, device):
    ix = rng.integers(0, data.size - ctx, size=batch)  # the last window's target ends on the last byte
    x = torch.from_numpy(np.stack([data[i : i + ctx] for i in ix]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[i + 1 : i + 1 + ctx] for i in ix]).astype(np.int64))
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y
