"""Activation patching between two texts of equal byte length: which layers, positions and heads carry what makes the
clean text's next byte differ from the corrupt one's.

Both texts are run once (the hook points blocks.{i}.hook_resid_pre and blocks.{i}.attn.hook_z kept). The measure is the
logit difference at the last position, logit[target] − logit[foil]: target defaults to the clean run's top byte, foil
to the corrupt run's top byte other than target. Then the corrupt run again with one piece taken from the clean run:

- residual (layer, position): the stream entering block `layer` at `position` (hook_resid_pre);
- head (layer, head): that head's output z at every position (hook_z, TransformerLens's "head out, all positions").

Each is reported as the fraction of the clean-vs-corrupt difference it restores, (patched − corrupt) / (clean −
corrupt): 1 restores it all, 0 nothing. A patched run starts at block `layer` from the corrupt run's kept stream
(Transformer.run_blocks over the later blocks, the positions of one layer batched), and only the last position is
unembedded. A residual patch at position p leaves every position before p as it was, so a batch of patches runs
only from its first position on, the earlier positions' keys and values taken from the corrupt run (a KV cache).
A residual position before the texts' first different byte holds the same stream in both runs: its
patched run is the corrupt run, so it is not run again.

Identities (tests/test_patching.py): every position of one layer's residual patched gives the clean logits; nothing
patched gives the corrupt ones; every head of every layer patched gives the clean logits at the last position when
the texts end on the same byte (the embedding and MLPs there then see what the clean run saw).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.hooks import Hooks, point, run_with_cache
from model.kv_cache import CacheSlots, KVCache

BATCH = 16  # patched runs per forward pass (each from its first position: smaller batches skip more)


@dataclass
class Patching:
    target: int
    foil: int
    clean_logit_diff: float
    corrupt_logit_diff: float
    residual: np.ndarray  # (n_layer, T): fraction restored by patching the stream entering layer at position
    heads: np.ndarray  # (n_layer, n_head): fraction restored by patching the head's output at every position
    residual_logit_diff: np.ndarray  # (n_layer, T): the patched runs' logit differences themselves
    heads_logit_diff: np.ndarray  # (n_layer, n_head)


def kept_points(n_layer: int) -> list[str]:
    names = ("hook_resid_pre", "attn.hook_z", "attn.hook_k", "attn.hook_v")
    return [point(i, name) for i in range(n_layer) for name in names]


@torch.inference_mode()
def run_suffix(model, layer: int, x: torch.Tensor, start: int, corrupt: dict) -> torch.Tensor:
    """Last-position logits (B, vocab) of streams x (B, T − start, C) at positions start.. entering block `layer`,
    the positions before `start` read from the corrupt run's keys and values (a KV cache filled with them): a patch
    at a position ≥ start changes nothing before it, so those positions are not run again."""
    B, n, _ = x.shape
    cfg = model.config
    cache = KVCache(cfg, B, x.dtype, x.device, max_len=start + n)
    for i in range(layer, cfg.n_layer):
        k, v = cache.layer(i)
        k[:, :, :start] = corrupt[point(i, "attn.hook_k")][0, :, :start]
        v[:, :, :start] = corrupt[point(i, "attn.hook_v")][0, :, :start]
    slots = CacheSlots(0, torch.arange(start, start + n, device=x.device).expand(B, n))
    out, _ = model.run_blocks(x, range(layer, cfg.n_layer), cache=cache, slots=slots)
    return model.unembed(out[:, -1])


@torch.inference_mode()
def run_from(model, layer: int, x: torch.Tensor, hooks: Hooks | None = None) -> torch.Tensor:
    """Last-position logits (B, vocab) of streams x (B, T, C) entering block `layer`, through the later blocks."""
    out, _ = model.run_blocks(x, range(layer, model.config.n_layer), hooks=hooks)
    return model.unembed(out[:, -1])


def z_patch(layer: int, heads: list[list[int]], clean_z: torch.Tensor) -> Hooks:
    """A hook at the layer's hook_z giving batch row b the clean outputs (every position) of the heads in heads[b]."""

    def edit(z: torch.Tensor, name: str) -> torch.Tensor:  # z: (B, nh, T, hs)
        z = z.clone()
        for row, patched in enumerate(heads):
            z[row, patched] = clean_z[0, patched]
        return z

    return Hooks([(point(layer, "attn.hook_z"), edit)])


@torch.inference_mode()
def patched_logits(model, clean_ids, corrupt_ids, layer: int, positions=(), heads=()) -> torch.Tensor:
    """The corrupt run's last-position logits (vocab,) with, from the clean run, the residual entering `layer` at
    `positions` and the outputs of `heads` (of that layer, all positions) patched in."""
    points = kept_points(model.config.n_layer)
    _, clean = run_with_cache(model, torch.tensor([clean_ids]), points)
    _, corrupt = run_with_cache(model, torch.tensor([corrupt_ids]), points)
    x = corrupt[point(layer, "hook_resid_pre")].clone()
    for p in positions:
        x[0, p] = clean[point(layer, "hook_resid_pre")][0, p]
    hooks = z_patch(layer, [list(heads)], clean[point(layer, "attn.hook_z")]) if heads else None
    return run_from(model, layer, x, hooks)[0]


def logit_diff(logits: torch.Tensor, target: int, foil: int) -> torch.Tensor:
    return (logits[..., target] - logits[..., foil]).double()


@torch.inference_mode()
def patch(model, clean_ids: list[int], corrupt_ids: list[int], target: int | None = None, foil: int | None = None):
    """Every layer × position of the residual stream and every head, patched from clean into corrupt (see above)."""
    if len(clean_ids) != len(corrupt_ids):
        raise ValueError(f"the texts differ in length: {len(clean_ids)} and {len(corrupt_ids)} bytes")
    cfg = model.config
    T, points = len(clean_ids), kept_points(cfg.n_layer)
    clean_logits, clean = run_with_cache(model, torch.tensor([clean_ids]), points)
    corrupt_logits, corrupt = run_with_cache(model, torch.tensor([corrupt_ids]), points)
    clean_last, corrupt_last = clean_logits[0, -1], corrupt_logits[0, -1]
    target = int(clean_last.argmax()) if target is None else target
    if foil is None:
        ranked = torch.argsort(corrupt_last, descending=True, stable=True).tolist()
        foil = next(b for b in ranked if b != target)
    m_clean, m_corrupt = float(logit_diff(clean_last, target, foil)), float(logit_diff(corrupt_last, target, foil))
    residual = np.full((cfg.n_layer, T), m_corrupt)
    heads = np.zeros((cfg.n_layer, cfg.n_head))
    for layer in range(cfg.n_layer):
        x_clean, x_corrupt = clean[point(layer, "hook_resid_pre")][0], corrupt[point(layer, "hook_resid_pre")][0]
        differ = [p for p in range(T) if not torch.equal(x_clean[p], x_corrupt[p])]
        for i in range(0, len(differ), BATCH):
            chunk = differ[i : i + BATCH]  # ascending: the batch runs from its first position on
            start = chunk[0]
            x = x_corrupt[start:].expand(len(chunk), T - start, -1).clone()  # (B, T − start, C)
            x[torch.arange(len(chunk)), torch.tensor(chunk) - start] = x_clean[chunk]  # row b patched at chunk[b]
            residual[layer, chunk] = logit_diff(run_suffix(model, layer, x, start, corrupt), target, foil).numpy()
        x = x_corrupt.expand(cfg.n_head, T, -1)  # (nh, T, C): row h has head h patched
        hooks = z_patch(layer, [[h] for h in range(cfg.n_head)], clean[point(layer, "attn.hook_z")])
        heads[layer] = logit_diff(run_from(model, layer, x, hooks), target, foil).numpy()
    span = m_clean - m_corrupt
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = lambda m: (m - m_corrupt) / span if abs(span) > 1e-9 else np.full_like(m, np.nan)
        return Patching(target, foil, m_clean, m_corrupt, fraction(residual), fraction(heads), residual, heads)
