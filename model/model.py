"""A Llama-style byte-level decoder, written in the order data flows through it.

Conventions follow Hugging Face's `LlamaForCausalLM` exactly (RMSNorm computed in float32, rotate-half
RoPE, bias-free projections with the same names and shapes), so a checkpoint maps onto it one to one
(see `model.export_hf`).

Attention is softmax(QKᵀ/√d_k)·V per head. Two paths compute it: the fused
`F.scaled_dot_product_attention` (fast) and an explicit masked softmax that also returns the
probabilities (B, n_head, T_query, T_key) — that is how attention maps are served.

This is the only forward pass in Python. The analyses read and edit it at its hook points (model.hooks:
TransformerLens's names): model.trace keeps a run's residual stream, head outputs and probabilities through them,
and switches heads off by editing z. The native step (model/native/) is the same model in C++.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig
from model.hooks import Hooks, point
from model.kv_cache import CacheSlots, KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's rotation angles, each (context_length, head_dim), float32."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.outer(torch.arange(cfg.context_length).float(), inv_freq)  # (L, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (L, d)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hs); cos, sin: (B, 1, T, hs)
    return x * cos + rotate_half(x) * sin


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor],
    slots: CacheSlots,
) -> torch.Tensor:
    """softmax(QKᵀ/√d)·V with this step's keys and values written into the cache first: (B, nh, T, hs).
    Reads only the cache positions in use (one host read of how many)."""
    B, T = slots.positions.shape
    last = int(slots.positions.max())
    keys, values = slots.write_and_read(cache, k, v, last + 1)
    uniform = T == 1 and (B == 1 or last == int(slots.positions.min()))  # every query sees every key read
    mask = None if uniform else slots.mask(last + 1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


class Attention(nn.Module):
    """Multi-head causal self-attention: project, then per head softmax(QKᵀ/√d_k)·V by the fused kernel or the
    explicit masked softmax (mix), then W_O. Its pieces are methods so that the analyses (model.explain) compute
    with the model's own arithmetic, not a copy of it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.qkv: nn.Module | None = None  # Q, K and V in one matmul: the torch step's copies only (model.torch_step)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """The queries, keys and values of x (B, T, C), RoPE applied to q and k: (B, nh, T, hs) each."""
        B, T, C = x.shape
        if self.qkv is not None:
            q, k, v = self.qkv(x).split(C, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        # (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def mix(self, q, k, v, mask: torch.Tensor, hooks: Hooks | None = None, layer: int = 0):
        """The explicit masked softmax: the heads' outputs (B, nh, T, hs) and the probabilities (B, nh, T, T_key);
        mask: True where a query may read a key, broadcast to (B, nh, T, T_key)."""
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, T_key)
        scores = scores.float().masked_fill(~mask, float("-inf"))
        if hooks:
            scores = hooks(point(layer, "attn.hook_attn_scores"), scores)
        probs = F.softmax(scores, dim=-1)
        if hooks:
            probs = hooks(point(layer, "attn.hook_pattern"), probs)
        return probs.to(v.dtype) @ v, probs

    def head_writes(self, z: torch.Tensor) -> torch.Tensor:
        """Each head's write into the residual stream, z (B, nh, T, hs) through its columns of W_O: (B, T, nh, C)."""
        w_o = self.o_proj.weight.view(-1, self.n_head, self.head_dim)  # (C, nh, hs)
        return torch.einsum("bnth,cnh->btnc", z, w_o)

    def forward(self, x, cos, sin, mask, need_weights: bool, cache=None, slots=None, hooks=None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.project(x, cos, sin)  # (B, nh, T, hs) each
        if hooks:
            q = hooks(point(layer, "attn.hook_q"), q)
            k = hooks(point(layer, "attn.hook_k"), k)
            v = hooks(point(layer, "attn.hook_v"), v)
        probs = None
        if need_weights or (hooks and layer in hooks.explicit_layers):
            if slots is not None:
                k, v = slots.write_and_read(cache, k, v)  # (B, nh, n_keys, hs)
            y, probs = self.mix(q, k, v, mask, hooks, layer)
        elif slots is not None:
            y = cached_attention(q, k, v, cache, slots)  # (B, nh, T, hs)
        else:  # whole sequences from position 0
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        if hooks:
            y = hooks(point(layer, "attn.hook_z"), y)
            if point(layer, "attn.hook_result") in hooks:
                hooks(point(layer, "attn.hook_result"), self.head_writes(y))
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C): heads concatenated
        return self.o_proj(y), probs


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)
        self.gate_up: nn.Module | None = None  # gate and up in one matmul: inference copies only

    def forward(self, x):
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask, need_weights, cache=None, slots=None, hooks=None, layer: int = 0):
        if hooks:
            x = hooks(point(layer, "hook_resid_pre"), x)
        a, probs = self.self_attn(self.input_layernorm(x), cos, sin, mask, need_weights, cache, slots, hooks, layer)
        if hooks:
            a = hooks(point(layer, "hook_attn_out"), a)
        x = x + self.resid_dropout(a)
        if hooks:
            x = hooks(point(layer, "hook_resid_mid"), x)
        m = self.mlp(self.post_attention_layernorm(x))
        if hooks:
            m = hooks(point(layer, "hook_mlp_out"), m)
        x = x + self.resid_dropout(m)
        if hooks:
            x = hooks(point(layer, "hook_resid_post"), x)
        return x, probs


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def forward(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor | None = None,
        need_weights: bool = False,
        cache: KVCache | None = None,
        slots: CacheSlots | None = None,
        hooks: Hooks | None = None,
    ):
        """Logits (B, T, vocab) for every position, and, if asked, each layer's attention probabilities.

        idx: (B, T) byte ids. Without a cache, the batch is whole sequences from position 0 and attention is
        causal over them; attention maps are (B, nh, T, T). With a cache, `slots` say where this step's keys
        and values go (positions are slots.positions); attention reads back up to each query's position, and
        the maps are (B, nh, T, slots.n_keys). hooks: functions at the hook points (model.hooks).
        """
        x = self.embed(idx, hooks)
        x, attn = self.run_blocks(x, range(self.config.n_layer), positions, need_weights, cache, slots, hooks)
        return self.unembed(x), attn

    def embed(self, idx: torch.Tensor, hooks: Hooks | None = None) -> torch.Tensor:
        """The residual stream's start: each byte's embedding, (B, T) -> (B, T, C)."""
        x = self.embed_tokens(idx)
        return hooks("hook_embed", x) if hooks else x

    def run_blocks(
        self,
        x: torch.Tensor,
        layers: range,
        positions: torch.Tensor | None = None,
        need_weights: bool = False,
        cache: KVCache | None = None,
        slots: CacheSlots | None = None,
        hooks: Hooks | None = None,
    ):
        """The residual stream x (B, T, C) through the blocks in `layers` (all of them, or a part: model.trace runs
        a text block by block); the stream after them, and per block its probabilities when need_weights."""
        B, T, _ = x.shape
        explicit = need_weights or (hooks is not None and hooks.explicit_layers)
        if slots is not None:
            positions = slots.positions
            mask = slots.mask() if explicit else None  # (B, 1, T, n_keys); else the cache op masks
        elif explicit:
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
        else:
            mask = None  # causal, handled inside the fused kernel
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        cos = self.rope_cos[positions].unsqueeze(1).to(x.dtype)  # (B, 1, T, hs)
        sin = self.rope_sin[positions].unsqueeze(1).to(x.dtype)
        attn = []
        for i in layers:
            layer_cache = cache.layer(i) if slots is not None else None
            x, probs = self.layers[i](x, cos, sin, mask, need_weights, layer_cache, slots, hooks, i)
            attn.append(probs)
        return x, (attn if need_weights else None)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the residual stream (..., C): the final norm, then lm_head."""
        return self.lm_head(self.norm(x))
