"""A run of the exact model over a text, keeping what the inspection tools read, with chosen heads switched off.

`run(model, ids)` is the model's own forward pass (Transformer.forward without a cache), with hooks (model.hooks)
that keep what the tools read: a trace is a cache filled by hooks. Its logits are the model's, bitwise. It keeps:

- the residual stream after the embedding and after each block's attention and MLP (the logit lens reads these);
- each head's output z before W_O, and each MLP's output (direct logit attribution splits the logits by them);
- the attention probabilities of the layers asked for, from the explicit masked softmax, as /v1/attention serves.

Switching heads off (`heads_off=[(layer, head), ...]`) is an edit at hook_z: a head's output z is replaced before
W_O, so its write
into the residual stream is, with `ablation="zero"`, nothing, and with `"mean"`, its mean over the text's positions
in this same run (heads switched off upstream included). A mean reads every position of the text, so a byte's
output then depends on later bytes too. The switched-off head's own probabilities are still computed and reported;
what changes is what it writes, and so everything after it. With no head switched off no extra op runs: the
result is bitwise the plain model's.

The tools read a trace: model.explain (one head step by step), model.lens (the logit lens), model.attribution
(direct logit attribution), model.ablation (the loss without some heads). `RecentRuns` keeps the last traces,
so looking at another head or byte of the same text costs no forward pass. A forward pass without hooks (the
serving path) pays nothing for any of this.

`cached_step(model, ids, start, cache, row, heads_off)` is the same forward pass over a chunk of one growing
sequence, its keys and values in a row of the KV cache: the runner's exact generation (heads switched off with
zeros, each token explained). It keeps, at the chunk's last position, what model.attribution.split_logits reads. A
mean over a text that is still growing is not defined, so it switches heads off with zeros only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from model.config import ModelConfig
from model.hooks import HookFn, Hooks, point
from model.kv_cache import CacheSlots, KVCache
from model.model import Transformer

Ablation = Literal["zero", "mean"]
ABLATIONS: tuple[Ablation, ...] = get_args(Ablation)
Head = tuple[int, int]  # (layer, head)


@dataclass
class Trace:
    """What one run of the model over a text kept. T: the text's bytes, C: d_model, nh: heads, hs: head_dim."""

    ids: list[int]
    heads_off: list[Head]
    ablation: Ablation
    residuals: list[torch.Tensor]  # the embedding, then after each block's attention and after its MLP: (T, C) each
    z: list[torch.Tensor] = field(default_factory=list)  # per block: (T, nh, hs), each head's output before W_O
    mlp: list[torch.Tensor] = field(default_factory=list)  # per block: (T, C), what its MLP adds
    probs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (nh, T, T) attention probabilities
    logits: torch.Tensor | None = None  # (T, vocab), once every block has run

    @property
    def blocks(self) -> int:
        """How many of the model's blocks have run (run(..., blocks=n) stops early; extend goes on)."""
        return len(self.z)

    def block_input(self, layer: int) -> torch.Tensor:
        return self.residuals[2 * layer]

    def after_attention(self, layer: int) -> torch.Tensor:
        return self.residuals[2 * layer + 1]


def heads_off_problem(cfg: ModelConfig, heads_off: Sequence[Head]) -> str | None:
    """Why heads_off cannot be switched off in a model of this shape (a head it does not have, a head named
    twice); None when they can."""
    seen = set()
    for layer, head in heads_off:
        if not (0 <= layer < cfg.n_layer and 0 <= head < cfg.n_head):
            return (
                f"head [{layer}, {head}] is not in the model: layers are 0..{cfg.n_layer - 1}, "
                f"heads 0..{cfg.n_head - 1}"
            )
        if (layer, head) in seen:
            return f"head [{layer}, {head}] is named twice"
        seen.add((layer, head))
    return None


def heads_by_layer(cfg: ModelConfig, heads_off: Sequence[Head]) -> dict[int, list[int]]:
    """The heads to switch off, grouped by layer; ValueError when the model does not have them."""
    if problem := heads_off_problem(cfg, heads_off):
        raise ValueError(problem)
    off: dict[int, list[int]] = {}
    for layer, head in heads_off:
        off.setdefault(layer, []).append(head)
    return off


def check_text(cfg: ModelConfig, ids: Sequence[int]) -> None:
    if not 0 < len(ids) <= cfg.context_length:
        raise ValueError(f"text has {len(ids)} bytes; 1..{cfg.context_length} fit")


@torch.inference_mode()
def run(
    model: Transformer,
    ids: Sequence[int],
    heads_off: Sequence[Head] = (),
    ablation: Ablation = "zero",
    weights_of: Collection[int] = (),
    blocks: int | None = None,
) -> Trace:
    """Run the model over ids; the layers in weights_of use the explicit softmax and keep their probabilities, the
    others the fused kernel (as the plain model does). With `blocks`, only the first that many blocks run (what
    model.explain of a layer needs); `extend` runs the rest later."""
    cfg = model.config
    check_text(cfg, ids)
    heads_by_layer(cfg, heads_off)  # checked before the embedding runs; extend groups them again
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {', '.join(map(repr, ABLATIONS))}, got {ablation!r}")
    heads_off = [(layer, head) for layer, head in heads_off]
    x = model.embed(torch.tensor([list(ids)], device=model.lm_head.weight.device))  # (1, T, C)
    trace = Trace(list(ids), heads_off, ablation, residuals=[x[0]])
    return extend(model, trace, cfg.n_layer if blocks is None else blocks, weights_of)


@torch.inference_mode()
def extend(model: Transformer, trace: Trace, blocks: int, weights_of: Collection[int] = ()) -> Trace:
    """Run the trace's text on through its blocks up to `blocks` (the final norm and the unembedding once every
    block has run), as run() does: the blocks it has already run are not run again."""
    cfg = model.config
    layers = range(trace.blocks, blocks)
    hooks = Hooks()
    for layer, heads in heads_by_layer(cfg, trace.heads_off).items():
        if layer in layers:
            hooks.add(point(layer, "attn.hook_z"), switch_off(heads, trace.ablation))
    for layer in layers:  # batch 1: keep row 0 of each
        hooks.add(point(layer, "attn.hook_z"), lambda z, name: trace.z.append(z[0].transpose(0, 1)))  # (T, nh, hs)
        hooks.add(point(layer, "hook_resid_mid"), lambda x, name: trace.residuals.append(x[0]))
        hooks.add(point(layer, "hook_mlp_out"), lambda m, name: trace.mlp.append(m[0]))
        hooks.add(point(layer, "hook_resid_post"), lambda x, name: trace.residuals.append(x[0]))
        if layer in weights_of:
            hooks.add(point(layer, "attn.hook_pattern"), record_probs(trace, layer))
    x, _ = model.run_blocks(trace.residuals[-1][None], layers, hooks=hooks)  # (1, T, C)
    if trace.blocks == cfg.n_layer and trace.logits is None:
        trace.logits = model.unembed(x)[0]
    return trace


def record_probs(trace: Trace, layer: int) -> HookFn:
    def keep(probs: torch.Tensor, name: str) -> None:
        trace.probs[layer] = probs[0].float()  # (nh, T, T)

    return keep


def switch_off(heads: list[int], ablation: Ablation) -> HookFn:
    """An edit of z (B, nh, T, hs): the outputs of `heads` replaced by zeros, or by their mean over the positions."""

    def edit(z: torch.Tensor, name: str) -> torch.Tensor:
        z = z.clone()
        if ablation == "zero":
            z[:, heads] = 0
        else:
            z[:, heads] = z[:, heads].mean(dim=2, keepdim=True)  # (B, len(heads), 1, hs), broadcast over positions
        return z

    return edit


class RecentRuns:
    """The traces of the last `keep` runs, kept: a run asked for again (same text, heads off and ablation) is read
    from here. Two by default: the plain run and one with heads off, as comparing them needs. For one caller at a
    time (the server calls it only on a model's engine thread)."""

    def __init__(self, model: Transformer, keep: int = 2):
        self.model, self.keep = model, keep
        self.traces: OrderedDict[tuple, Trace] = OrderedDict()

    def __call__(
        self, ids: Sequence[int], heads_off: Sequence[Head] = (), ablation: Ablation = "zero", blocks: int | None = None
    ) -> Trace:
        """The run of ids through at least `blocks` blocks (all by default): kept, extended, or run anew."""
        key = (tuple(ids), tuple(sorted((layer, head) for layer, head in heads_off)), ablation if heads_off else None)
        blocks = self.model.config.n_layer if blocks is None else blocks
        if key not in self.traces:
            self.traces[key] = run(self.model, ids, heads_off, ablation, blocks=blocks)
            while len(self.traces) > self.keep:
                self.traces.popitem(last=False)
        self.traces.move_to_end(key)
        return extend(self.model, self.traces[key], blocks)


@torch.inference_mode()
def attention_maps(
    model: Transformer, ids: Sequence[int], heads_off: Sequence[Head], ablation: Ablation = "zero"
) -> torch.Tensor:
    """Runner.attention's maps with heads switched off: (n_layer, n_head, T, T), float32 on the CPU."""
    trace = run(model, ids, heads_off, ablation, weights_of=range(model.config.n_layer))
    return torch.stack([trace.probs[i] for i in range(model.config.n_layer)]).cpu()


@dataclass
class Step:
    """What cached_step kept at its chunk's last position: its logits, and the writes into the residual stream there
    that model.attribution.split_logits splits them by. C: d_model, nh: heads, hs: head_dim."""

    logits: torch.Tensor  # (vocab,)
    embedding: torch.Tensor  # (C,)
    z: list[torch.Tensor]  # per block: (nh, hs), each head's output before W_O (zeros where switched off)
    mlp: list[torch.Tensor]  # per block: (C,), what its MLP adds
    final: torch.Tensor  # (C,), the stream after the last block
    attention: torch.Tensor | None  # (n_layer, nh, keys): the position's attention probabilities, when asked


@torch.inference_mode()
def cached_step(
    model: Transformer,
    ids: Sequence[int],
    start: int,
    cache: KVCache,
    row: int,
    heads_off: Sequence[Head] = (),
    need_weights: bool = False,
) -> Step:
    """Positions start..start+len(ids)-1 of one sequence through the exact model, heads_off switched off (zeros):
    their keys and values go into cache row `row`, whose positions before `start` hold the earlier ones. With
    need_weights, the explicit softmax, keeping the last position's probabilities; else the fused kernel."""
    cfg = model.config
    end = start + len(ids)
    if not 0 <= start < end <= cfg.context_length:
        raise ValueError(f"positions {start}..{end - 1} are not in the context (0..{cfg.context_length - 1})")
    device = model.lm_head.weight.device
    slots = CacheSlots(row, torch.arange(start, end, device=device).unsqueeze(0))  # (1, T)
    hooks, z, mlps = Hooks(), [], []
    for layer, heads in heads_by_layer(cfg, heads_off).items():
        hooks.add(point(layer, "attn.hook_z"), switch_off(heads, "zero"))
    for layer in range(cfg.n_layer):  # the chunk's last position
        hooks.add(point(layer, "attn.hook_z"), lambda y, name: z.append(y[0, :, -1]))  # (nh, hs)
        hooks.add(point(layer, "hook_mlp_out"), lambda m, name: mlps.append(m[0, -1]))  # (C,)
    x = model.embed(torch.tensor([list(ids)], device=device))  # (1, T, C)
    embedding = x[0, -1]
    x, probs = model.run_blocks(x, range(cfg.n_layer), need_weights=need_weights, cache=cache, slots=slots, hooks=hooks)
    final = x[0, -1]
    attention = torch.stack([p[0, :, -1] for p in probs]) if need_weights else None  # (n_layer, nh, keys)
    return Step(model.unembed(final), embedding, z, mlps, final, attention)
