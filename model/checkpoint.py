"""Checkpoints are folders: config.json + model.safetensors + training.json (+ optimizer.pt, for resuming only).

Saving is atomic: everything is written into `DIR.tmp`, then swapped in by renames; a kill at any moment
leaves either the old or the new checkpoint complete (a leftover `DIR.old` is picked up by `resolve`).
Loading for inference never unpickles: only JSON and safetensors are read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model import json_file
from model.config import ModelConfig
from model.model import Transformer

CONFIG, WEIGHTS, TRAINING, OPTIMIZER = "config.json", "model.safetensors", "training.json", "optimizer.pt"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def resolve(path) -> Path:
    """The checkpoint folder to read: `path`, or the complete previous one if a save was interrupted."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not (path / WEIGHTS).exists() and (old / WEIGHTS).exists():
        return old
    return path


def exists(path) -> bool:
    return (resolve(path) / CONFIG).exists()


def save(
    path,
    model: Transformer,
    training: dict,
    optimizer_state: dict | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> None:
    """Write the checkpoint folder atomically; extra_files (name -> contents) go inside the same swap."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.config.save(tmp / CONFIG)
    # clone: the file must not share memory with the live model (safetensors refuses shared tensors)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        del state["lm_head.weight"]  # the same tensor as embed_tokens.weight
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / TRAINING).write_text(json_file.dumps(training, indent=2) + "\n")
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / OPTIMIZER)
    for name, data in (extra_files or {}).items():
        (tmp / name).write_bytes(data)
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.iterdir():
        f.chmod(0o666 & ~umask)  # safetensors writes 0600; a checkpoint is for others to read (a container user)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    # Swap in: path -> path.old, tmp -> path, drop path.old. Each rename is atomic.
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_config(path) -> ModelConfig:
    f = resolve(path) / CONFIG
    if not f.exists():
        raise CheckpointError(f"{f}: missing (a checkpoint folder needs {CONFIG} and {WEIGHTS})")
    try:
        return ModelConfig.load(f)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{f}: invalid model config: {e}") from e


def content_sha256(path) -> str:
    """sha256 of what decides a checkpoint's outputs: its config.json and model.safetensors."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        digest.update(hashlib.sha256((resolve(path) / name).read_bytes()).digest())
    return digest.hexdigest()


def load_training(path) -> dict:
    f = resolve(path) / TRAINING
    if not f.exists():
        return {}
    try:
        return json_file.loads(f.read_text())
    except ValueError as e:
        raise CheckpointError(f"{f}: invalid JSON: {e}") from e


def load_state_dict(path, cfg: ModelConfig, device="cpu", model: Transformer | None = None) -> dict[str, torch.Tensor]:
    """The weights, checked against the shapes `cfg` implies (those of `model`, when given, built from cfg)."""
    f = resolve(path) / WEIGHTS
    if not f.exists():
        raise CheckpointError(f"{f}: missing")
    if not os.access(f, os.R_OK):
        raise CheckpointError(f"{f}: not readable by this user (permission denied)")
    try:
        with safe_open(str(f), framework="pt", device=str(device)) as sf:
            state = {k: sf.get_tensor(k) for k in sf.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{f}: unreadable or truncated safetensors file: {e}") from e

    # A model built on the CPU, not on the meta device: at this size that takes milliseconds, where the meta
    # device's first use imports torch's reference implementations (seconds of start-up).
    expected = {k: v.shape for k, v in (model or Transformer(cfg)).state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} is {tuple(state[k].shape)}, config implies {tuple(s)}"
        for k, s in expected.items()
        if k in state and state[k].shape != s
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append("; ".join(wrong[:5]))
    if problems:
        raise CheckpointError(f"{f}: does not match {CONFIG}: " + "; ".join(problems))
    # Corrupt data under an intact header would load and generate garbage (NaN logits fail every request).
    # A sum is NaN or infinite when any value is (and reads the data once, allocating nothing); only then look
    # closer, since a huge finite tensor could also overflow its sum.
    corrupt = [
        k
        for k, t in state.items()
        if t.is_floating_point() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all()
    ]
    if corrupt:
        raise CheckpointError(f"{f}: corrupt: NaN or infinite values in {corrupt[:5]}")
    return state


def load_model(path, device="cpu", dtype: torch.dtype = torch.float32) -> Transformer:
    """Build the model from the checkpoint's config and load its weights, in eval mode."""
    cfg = load_config(path)
    model = Transformer(cfg)
    state = load_state_dict(path, cfg, model=model)
    model.load_state_dict(state, strict=not cfg.tie_embeddings, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.to(device=device, dtype=dtype).eval()
