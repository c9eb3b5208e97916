"""One head, one query byte, step by step: softmax(q·kᵀ/√d_k)·V and the head's write into the residual stream.

`explain(model, trace, layer, head, query)` redoes that head's arithmetic for the query byte from the block's input
in a run of the model (model.trace, heads optionally switched off) and the model's own weights, keeping every step:

    h = RMSNorm(x)                      the block's input x, normalised (input_layernorm)
    q = RoPE(h_query · W_Qᵀ)            the query, before and after the rotation of its position
    k_j = RoPE(h_j · W_Kᵀ), v_j = h_j · W_Vᵀ   for every byte j of the text
    s_j = q·k_j                         raw scores
    s_j / √d_k                          scaled scores
    mask: j <= query                    causal: later bytes are set to -inf before the softmax
    w = softmax(masked scaled scores)   the weights (0 for every masked byte)
    z = Σ_j w_j v_j                     the head's output
    write = z · W_O[:, head]ᵀ           what it adds to the residual stream (W_O's columns for this head)

and three checks against the run itself: the weights against the layer's attention probabilities (the explicit
softmax /v1/attention serves), z against the head's output in the run, and the sum of every head's write plus the
block's input against the residual after attention. Each is a max abs difference.

The run need only have gone through the blocks before the layer (blocks_needed): a new text then costs those blocks
and not the rest of the model. The layer itself is then computed with the model's own attention (its project, mix
and fused kernel: model.model.Attention), every head at once, at the query's row only; a run that went through the
layer is read instead.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.model import Transformer, apply_rope
from model.trace import Ablation, Head, Trace


@dataclass
class Walkthrough:
    """The steps of one head for one query byte over a text of T bytes (hs: head_dim, C: d_model)."""

    layer: int
    head: int
    query: int  # byte index
    q_before_rope: torch.Tensor  # (hs,)
    q: torch.Tensor  # (hs,) after RoPE
    keys: torch.Tensor  # (T, hs) after RoPE, every byte (those after the query are masked)
    raw_scores: torch.Tensor  # (T,) q·k
    scaled_scores: torch.Tensor  # (T,) q·k / √d_k
    mask: torch.Tensor  # (T,) bool: True where the query may attend (bytes 0..query)
    weights: torch.Tensor  # (T,) softmax of the masked scaled scores
    values: torch.Tensor  # (T, hs)
    z: torch.Tensor  # (hs,) Σ w_j v_j
    write: torch.Tensor  # (C,) z · W_O's slice for this head
    block_input: torch.Tensor  # (C,) the residual stream at the query, before this block
    switched_off: bool  # the head is in heads_off: the run replaced its write (zero or mean)
    weights_vs_attention: float  # max |weights - the layer's attention row (explicit softmax)|
    z_vs_run: float | None  # max |z - the head's output in the run|; None when it was switched off
    writes_plus_input_vs_residual: float  # max |Σ_heads write + block input - residual after attention|

    @property
    def sqrt_d_k(self) -> float:
        return math.sqrt(self.q.shape[0])


def blocks_needed(cfg: ModelConfig, layer: int, heads_off: Collection[Head], ablation: Ablation) -> int:
    """How many blocks a run must have gone through for explain() of `layer`: the blocks before it, and the layer
    itself when one of its heads is replaced by its mean over the text (every position of the layer's run)."""
    mean_here = ablation == "mean" and any(off_layer == layer for off_layer, _ in heads_off)
    return min(cfg.n_layer, max(0, layer + mean_here))


@torch.inference_mode()
def explain(model: Transformer, trace: Trace, layer: int, head: int, query: int) -> Walkthrough:
    """The walkthrough of `head` in `layer` for the byte at index `query` of the traced text. The trace needs only
    the blocks before the layer (blocks_needed); when it has run the layer too, the checks read the run's outputs."""
    cfg = model.config
    for name, value, n in (("layer", layer, cfg.n_layer), ("head", head, cfg.n_head), ("query", query, len(trace.ids))):
        if not 0 <= value < n:
            raise ValueError(f"{name} {value} out of range: valid indices are 0..{n - 1}")
    if trace.blocks < blocks_needed(cfg, layer, trace.heads_off, trace.ablation):
        raise ValueError(f"the trace has run {trace.blocks} blocks; explaining layer {layer} needs more")
    attn = model.layers[layer].self_attn
    hs, T = cfg.head_dim, len(trace.ids)
    rows = slice(head * hs, (head + 1) * hs)  # this head's rows of W_Q, W_K, W_V, and columns of W_O

    x = trace.block_input(layer)  # (T, C)
    h = model.layers[layer].input_layernorm(x)  # (T, C)
    cos, sin = model.rope_cos[:T].to(h.dtype), model.rope_sin[:T].to(h.dtype)  # (T, hs)
    q_before = h[query] @ attn.q_proj.weight[rows].T  # (hs,)
    q = apply_rope(q_before, cos[query], sin[query])
    keys = apply_rope(h @ attn.k_proj.weight[rows].T, cos, sin)  # (T, hs)
    values = h @ attn.v_proj.weight[rows].T  # (T, hs)
    raw = keys @ q  # (T,)
    scaled = raw / math.sqrt(hs)
    mask = torch.arange(T, device=h.device) <= query
    weights = F.softmax(scaled.float().masked_fill(~mask, float("-inf")), dim=-1)
    z = weights.to(values.dtype) @ values  # (hs,)
    write = z @ attn.o_proj.weight[:, rows].T  # (C,)

    probs, z_run, after = layer_at_query(model, trace, layer, h, query, cos, sin, mask)
    switched_off = (layer, head) in trace.heads_off
    head_writes = attn.head_writes(z_run[None, :, None])[0, 0]  # (nh, C)
    x_query = x[query]
    return Walkthrough(
        layer=layer,
        head=head,
        query=query,
        q_before_rope=q_before,
        q=q,
        keys=keys,
        raw_scores=raw,
        scaled_scores=scaled,
        mask=mask,
        weights=weights,
        values=values,
        z=z,
        write=write,
        block_input=x_query,
        switched_off=switched_off,
        weights_vs_attention=max_diff(weights, probs[head]),
        z_vs_run=None if switched_off else max_diff(z, z_run[head]),
        writes_plus_input_vs_residual=max_diff(head_writes.sum(0) + x_query, after),
    )


def layer_at_query(model: Transformer, trace: Trace, layer: int, h: torch.Tensor, query: int, cos, sin, mask):
    """The layer at the query's row as the model computes it, every head at once, with the model's own attention:
    the row of the explicit softmax (what /v1/attention serves): (nh, T); the heads' outputs (nh, hs) and the
    residual after attention (C,) from the run when it has run the layer, else from the fused kernel over bytes
    0..query. h: the block's normalised input (T, C); cos, sin: (T, hs)."""
    attn = model.layers[layer].self_attn
    all_q, all_k, all_v = attn.project(h[None], cos[None, None], sin[None, None])  # (1, nh, T, hs) each
    row_q = all_q[:, :, query : query + 1]  # (1, nh, 1, hs)
    _, probs = attn.mix(row_q, all_k, all_v, mask)  # (1, nh, 1, T)
    if trace.blocks > layer:
        z_run = trace.z[layer][query]  # (nh, hs): every head's output at the query, as the run used it
        return probs[0, :, 0], z_run, trace.after_attention(layer)[query]
    seen = slice(0, query + 1)  # the causal row: the query reads bytes 0..query
    z_run = F.scaled_dot_product_attention(row_q, all_k[:, :, seen], all_v[:, :, seen])[0, :, 0]  # (nh, hs)
    z_run[[off_head for off_layer, off_head in trace.heads_off if off_layer == layer]] = 0
    after = trace.block_input(layer)[query] + attn.o_proj(z_run.reshape(model.config.d_model))
    return probs[0, :, 0], z_run, after


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
