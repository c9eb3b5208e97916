"""The KV cache: keys and values of every layer for a fixed number of rows (sequences), allocated once.

Shapes never change: per layer, keys and values of (rows, n_head, max_len, head_dim), written in place at
each row's positions. One tensor per layer, not one for all layers: a compiled step that writes into a
slice of a bigger tensor copies the whole tensor. A row is one sequence; how many of its positions are
valid is the caller's to track (the runner's sequences), and attention never reads past them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, rows: int, dtype: torch.dtype, device, max_len: int | None = None):
        max_len = max_len or cfg.context_length
        if not 0 < max_len <= cfg.context_length:
            raise ValueError(f"cache length {max_len} must be in 1..{cfg.context_length} (the context)")
        if rows < 1:
            raise ValueError(f"a cache needs at least one row, got {rows}")
        shape = (rows, cfg.n_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]

    @classmethod
    def of(cls, k: list[torch.Tensor], v: list[torch.Tensor]) -> KVCache:
        """A cache over existing per-layer tensors (no allocation)."""
        cache = cls.__new__(cls)
        cache.k, cache.v = k, v
        return cache

    @property
    def rows(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values, (rows, n_head, max_len, head_dim) each, written in place."""
        return self.k[i], self.v[i]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy row src's first `length` positions into row dst, in every layer."""
        for k, v in zip(self.k, self.v):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def nbytes(self) -> int:
        return sum(2 * k.numel() * k.element_size() for k in self.k)


@dataclass
class CacheSlots:
    """Where a forward pass writes its keys and values in the KV cache, and how far it reads back.

    Batch row b is cache row first_row + b (a batch always sits in consecutive rows); token t of it goes
    to position positions[b, t]. Attention reads each row's positions up to the query's own.
    """

    first_row: int
    positions: torch.Tensor  # (B, T) absolute positions

    @property
    def n_keys(self) -> int:
        """How many cache positions attention reads: up to the furthest query (a host read of positions)."""
        return int(self.positions.max()) + 1

    def write_and_read(self, cache: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor, n_keys=None):
        """Store k, v (B, nh, T, hs) in one layer's cache; return its rows' keys and values (B, nh, n_keys, hs)."""
        k_cache, v_cache = cache  # (rows, nh, max_len, hs) each
        B, n_keys = self.positions.shape[0], n_keys or self.n_keys
        rows = torch.arange(self.first_row, self.first_row + B, device=k.device).unsqueeze(1)  # (B, 1)
        # Indexing [rows, :, positions] addresses a (B, T, nh, hs) block of the cache.
        k_cache[rows, :, self.positions] = k.transpose(1, 2)
        v_cache[rows, :, self.positions] = v.transpose(1, 2)
        return k_cache[self.first_row : self.first_row + B, :, :n_keys], v_cache[
            self.first_row : self.first_row + B, :, :n_keys
        ]

    def mask(self, n_keys=None) -> torch.Tensor:
        """(B, 1, T, n_keys): True where a query may attend to a key (keys up to its own position)."""
        key_pos = torch.arange(n_keys or self.n_keys, device=self.positions.device)
        return (key_pos <= self.positions.unsqueeze(-1)).unsqueeze(1)
