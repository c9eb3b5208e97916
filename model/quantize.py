"""Symmetric int8 quantization per group of inputs: the arithmetic of the int8 weight form, shared by its torch
reference (model.weight_forms) and the native step (model/native/), which quantizes its activations the same way."""

from __future__ import annotations

import torch

from model.config import ModelConfig


def int8_group(cfg: ModelConfig) -> int | None:
    """How many inputs share one int8 scale: 64 (as llama2.c's runq), or 32 (llama.cpp's Q8_0) where the model's
    widths are not multiples of 64; None when they are not multiples of 32 (no int8 form)."""
    for group in (64, 32):
        if cfg.d_model % group == 0 and cfg.mlp_hidden % group == 0:
            return group
    return None


def quantize_groups(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group of `group` values along the last axis: x ≈ q * scale, q = round(x / scale) in
    [-127, 127], scale = max|x| / 127 per group. Returns q as float32 (..., K/group, group) and scale
    (..., K/group, 1): the same arithmetic as the native step's activations (model/native/kernels.h)."""
    xg = x.detach().float().unflatten(-1, (-1, group))  # (..., K/group, group)
    scale = xg.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    return torch.round(xg * inv).clamp(-127, 127), scale
