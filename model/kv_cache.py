"""The KV cache: keys and values of every layer for a fixed number of rows (sequences), allocated once.

Shapes never change: (n_layer, rows, n_head, max_len, head_dim), written in place at each row's
positions. A row is one sequence; how many of its positions are valid is the caller's to track (the
runner's per-row lengths), and attention never reads past them.
"""

from __future__ import annotations

import torch

from model.config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, rows: int, dtype: torch.dtype, device, max_len: int | None = None):
        max_len = max_len or cfg.context_length
        if not 0 < max_len <= cfg.context_length:
            raise ValueError(f"cache length {max_len} must be in 1..{cfg.context_length} (the context)")
        if rows < 1:
            raise ValueError(f"a cache needs at least one row, got {rows}")
        shape = (cfg.n_layer, rows, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values, (rows, n_head, max_len, head_dim) each: views, written in place."""
        return self.k[i], self.v[i]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy row src's first `length` positions into row dst, in every layer."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
