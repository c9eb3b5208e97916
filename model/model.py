"""A Llama-style byte-level decoder, written in the order data flows through it.

Conventions follow Hugging Face's `LlamaForCausalLM` exactly (RMSNorm computed in float32, rotate-half
RoPE, bias-free projections with the same names and shapes), so a checkpoint maps onto it one to one
(see `model.export_hf`).

Attention is softmax(QKᵀ/√d_k)·V per head. Two paths compute it: the fused
`F.scaled_dot_product_attention` (fast) and an explicit masked softmax that also returns the
probabilities (B, n_head, T_query, T_key) — that is how attention maps are served.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig


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


class KVCache(nn.Module):
    """Preallocated keys and values for one layer: (batch, n_head, max_len, head_dim), written in place."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: slice, n_keys: int):
        """Write k, v (B, nh, T, hs) at positions input_pos (B, T) of cache rows `rows`.

        Returns those rows' first n_keys positions (B, nh, n_keys, hs), as views: attention never reads
        further than the longest sequence in the batch.
        """
        index = torch.arange(rows.start, rows.stop, device=k.device).unsqueeze(1)  # (B, 1)
        # Indexing [index, :, input_pos] addresses a (B, T, nh, hs) block of the cache.
        self.k[index, :, input_pos] = k.transpose(1, 2)
        self.v[index, :, input_pos] = v.transpose(1, 2)
        return self.k[rows, :, :n_keys], self.v[rows, :, :n_keys]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.qkv_weight: torch.Tensor | None = None  # set by Transformer.fuse_projections()

    def forward(self, x, cos, sin, mask, input_pos, need_weights: bool, cache: tuple | None):
        B, T, C = x.shape
        if self.qkv_weight is not None:
            q, k, v = F.linear(x, self.qkv_weight).split(C, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        # (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            layer_cache, rows, n_keys = cache
            k, v = layer_cache.update(input_pos, k, v, rows, n_keys)  # (B, nh, n_keys, hs)

        probs = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, T_key)
            scores = scores.float().masked_fill(~mask, float("-inf"))
            probs = F.softmax(scores, dim=-1)
            y = probs.to(v.dtype) @ v  # (B, nh, T, hs)
        else:
            dropout = self.dropout if self.training else 0.0
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C): heads concatenated
        return self.o_proj(y), probs


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)
        self.gate_up_weight: torch.Tensor | None = None  # set by Transformer.fuse_projections()

    def forward(self, x):
        if self.gate_up_weight is not None:
            gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
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

    def forward(self, x, cos, sin, mask, input_pos, need_weights, cache):
        a, probs = self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos, need_weights, cache)
        x = x + self.resid_dropout(a)
        x = x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))
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
        self.caches: nn.ModuleList | None = None
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """For inference: Q, K, V in one matmul, gate and up in another (fewer, larger kernels per token).

        Call it after moving the model to its device and dtype. The parameters keep their names and values,
        re-pointed as views into the fused weights, so no memory is doubled.
        """
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv_weight = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
            mlp.gate_up_weight = _fuse(mlp.gate_proj, mlp.up_proj)

    def setup_caches(self, batch: int, max_len: int | None = None):
        """Allocate a fixed-shape KV cache per layer for up to `batch` sequences."""
        cfg = self.config
        max_len = max_len or cfg.context_length
        assert max_len <= cfg.context_length, f"cache length {max_len} exceeds context {cfg.context_length}"
        dtype, device = self.lm_head.weight.dtype, self.lm_head.weight.device
        self.caches = nn.ModuleList(
            KVCache(batch, cfg.n_head, max_len, cfg.head_dim, dtype, device) for _ in range(cfg.n_layer)
        )

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None, use_cache: bool = False,
                need_weights: bool = False, cache_row: int = 0, n_keys: int | None = None):
        """Logits (B, T, vocab) for every position, and, if asked, each layer's attention probabilities.

        idx: (B, T) byte ids. input_pos: (B, T) absolute positions (default 0..T-1 in every row).
        use_cache: write this step's keys and values into KV-cache rows cache_row..cache_row+B-1 and attend
        over their first n_keys positions (default: the whole cache; it must cover every position in
        input_pos), masking those after each query's own. The returned attention is (B, nh, T, T_key),
        T_key = T without the cache, n_keys with it.
        """
        B, T = idx.shape
        if input_pos is None:
            input_pos = torch.arange(T, device=idx.device).expand(B, T)
        cos = self.rope_cos[input_pos].unsqueeze(1)  # (B, 1, T, hs)
        sin = self.rope_sin[input_pos].unsqueeze(1)
        if use_cache:
            assert self.caches is not None, "call setup_caches() before using the cache"
            n_keys = n_keys or self.caches[0].k.shape[2]
            key_pos = torch.arange(n_keys, device=idx.device)
            mask = (key_pos <= input_pos.unsqueeze(-1)).unsqueeze(1)  # (B, 1, T, n_keys)
            rows = slice(cache_row, cache_row + B)
        elif need_weights:
            mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # (T, T)
        else:
            mask = None  # causal, handled inside the fused kernel

        x = self.embed_tokens(idx)  # (B, T, C)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        attn = []
        for i, layer in enumerate(self.layers):
            cache = (self.caches[i], rows, n_keys) if use_cache else None
            x, probs = layer(x, cos, sin, mask, input_pos, need_weights, cache)
            attn.append(probs)
        logits = self.lm_head(self.norm(x))
        return logits, (attn if need_weights else None)


def _fuse(*linears: nn.Linear) -> torch.Tensor:
    """One weight (sum of out_features, in_features) whose row blocks become the linears' weights."""
    fused = torch.cat([lin.weight for lin in linears])
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[start:start + n], requires_grad=False)
        start += n
    return fused
