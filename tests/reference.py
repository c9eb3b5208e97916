"""An independent float64 forward pass from a checkpoint's saved files (config.json, model.safetensors), with numpy
alone, keeping every intermediate: the outside reference the inspection tests compare the server with.

It shares no code with model/: RMSNorm, rotate-half RoPE, the scaled causal softmax, SwiGLU and the residual
stream are written out here from their definitions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


@dataclass
class Reference:
    """Per layer (lists indexed by layer): arrays over T bytes, nh heads, hs dims, C = d_model."""

    q_before_rope: list = field(default_factory=list)  # (nh, T, hs)
    q: list = field(default_factory=list)  # (nh, T, hs) after RoPE
    k: list = field(default_factory=list)  # (nh, T, hs) after RoPE
    v: list = field(default_factory=list)  # (nh, T, hs)
    probs: list = field(default_factory=list)  # (nh, T, T)
    z: list = field(default_factory=list)  # (nh, T, hs): each head's output
    head_writes: list = field(default_factory=list)  # (nh, T, C): z_h · W_O[:, h]ᵀ
    mlp: list = field(default_factory=list)  # (T, C)
    residuals: list = field(default_factory=list)  # embedding, after each attention, after each MLP: (T, C)
    logits: np.ndarray | None = None  # (T, vocab)
    norm_scale: np.ndarray | None = None  # (T,): the final RMSNorm's 1/rms
    readout: np.ndarray | None = None  # (vocab, C): lm_head ⊙ final norm weight


def reference(ckpt: Path, ids: list[int], heads_off=(), attention_removed=()) -> Reference:
    """The forward pass of the checkpoint over ids. heads_off: (layer, head) pairs whose outputs are zeroed;
    attention_removed: layers whose attention adds nothing (the block is x + MLP(norm(x)) alone)."""
    cfg = json.loads((Path(ckpt) / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(Path(ckpt) / "model.safetensors")).items()}
    nh, C = cfg["n_head"], cfg["d_model"]
    hs, T = C // nh, len(ids)

    def rms_norm(x, weight):
        return weight * x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg["norm_eps"])

    inv_freq = cfg["rope_theta"] ** (-np.arange(0, hs, 2) / hs)  # (hs/2,)
    angles = np.arange(T)[:, None] * inv_freq[None, :]  # (T, hs/2)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))

    def rope(x):  # (nh, T, hs): element i pairs with element i + hs/2
        return x * cos + np.concatenate([-x[..., hs // 2 :], x[..., : hs // 2]], -1) * sin

    def split(x):  # (T, C) -> (nh, T, hs)
        return x.reshape(T, nh, hs).transpose(1, 0, 2)

    out = Reference()
    x = w["embed_tokens.weight"][ids]  # (T, C)
    out.residuals.append(x)
    for layer in range(cfg["n_layer"]):
        p = f"layers.{layer}."
        h = rms_norm(x, w[p + "input_layernorm.weight"])
        q_before = split(h @ w[p + "self_attn.q_proj.weight"].T)
        q, k = rope(q_before), rope(split(h @ w[p + "self_attn.k_proj.weight"].T))
        v = split(h @ w[p + "self_attn.v_proj.weight"].T)
        scores = np.where(np.tril(np.ones((T, T), dtype=bool)), q @ k.transpose(0, 2, 1) / np.sqrt(hs), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        z = probs @ v  # (nh, T, hs)
        for lay, head in heads_off:
            if lay == layer:
                z[head] = 0
        w_o = w[p + "self_attn.o_proj.weight"].reshape(C, nh, hs)  # columns of W_O grouped by head
        writes = np.einsum("ntd,cnd->ntc", z, w_o)  # (nh, T, C)
        if layer not in attention_removed:
            x = x + writes.sum(0)
        out.residuals.append(x)
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        mlp = (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
        x = x + mlp
        out.residuals.append(x)
        for name, value in (("q_before_rope", q_before), ("q", q), ("k", k), ("v", v), ("probs", probs), ("z", z)):
            getattr(out, name).append(value)
        out.head_writes.append(writes)
        out.mlp.append(mlp)
    out.norm_scale = 1 / np.sqrt((x**2).mean(-1) + cfg["norm_eps"])
    out.readout = w["lm_head.weight"] * w["norm.weight"]
    out.logits = (x * out.norm_scale[:, None]) @ out.readout.T
    return out
