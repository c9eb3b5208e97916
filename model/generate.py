"""Generation: one prefill over the prompt, then one-token decode steps against the KV cache."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from model.model import Transformer
from model.sampling import SamplingParams, sample


@dataclass
class Step:
    token: int
    logprobs: torch.Tensor  # (vocab,) float32 on the CPU: log-softmax of the model's raw logits
    attention: list[torch.Tensor] | None  # per layer (n_head, T_key): the row that chose this token


def prefill(model: Transformer, ids: torch.Tensor, need_weights: bool = False):
    """Run the prompt (B, T) through the model, filling cache rows 0..B-1 from position 0."""
    B, T = ids.shape
    pos = torch.arange(T, device=ids.device).expand(B, T)
    return model(ids, pos, use_cache=True, need_weights=need_weights, n_keys=T)


def decode_one(model: Transformer, ids: torch.Tensor, pos: torch.Tensor, need_weights: bool = False,
               n_keys: int | None = None):
    """One decode step: ids (B, 1) at absolute positions pos (B, 1); n_keys > every position (default: all)."""
    return model(ids, pos, use_cache=True, need_weights=need_weights, n_keys=n_keys)


@torch.inference_mode()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, params: SamplingParams = SamplingParams(),
             generator: torch.Generator | None = None, need_weights: bool = False) -> Iterator[Step]:
    """Yield sampled tokens one at a time, until max_new_tokens or the context is full.

    With need_weights, each step carries every layer's attention row (n_head, T_key) of the query that
    produced the token: over the prompt and the tokens generated before it.
    """
    cfg = model.config
    assert len(prompt) > 0, "the prompt must have at least one byte"
    if max_new_tokens <= 0 or len(prompt) >= cfg.context_length:
        return
    device = model.lm_head.weight.device
    if model.caches is None:
        model.setup_caches(batch=1)
    seen = torch.tensor(prompt, dtype=torch.long)
    logits, attn = prefill(model, torch.tensor([prompt], device=device), need_weights)
    pos, n = len(prompt), 0  # pos: where the next token goes
    while True:
        row = logits[0, -1].float().cpu()
        token = sample(row, params, seen, generator)
        rows = [a[0, :, -1, :pos].float().cpu() for a in attn] if need_weights else None
        yield Step(token, F.log_softmax(row, dim=-1), rows)
        seen = torch.cat([seen, torch.tensor([token])])
        pos, n = pos + 1, n + 1
        if n >= max_new_tokens or pos >= cfg.context_length:
            return
        logits, attn = decode_one(model, torch.tensor([[token]], device=device),
                                  torch.tensor([[pos - 1]], device=device), need_weights, n_keys=pos)
