"""The logit lens: what the model would say next if it stopped after each layer.

The final norm and the unembedding (lm_head) read the residual stream at every stage: after the embedding, and
after each block's attention and its MLP (1 + 2 × n_layer stages). Each stage gives a next-byte distribution per
position; the last stage is the model's own. For each: the top-k bytes with their probabilities, the rank (1 = the
most likely) and probability of the byte that actually comes next, and the mean loss in bits per byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.model import Transformer
from model.trace import Trace


def stage_names(n_layer: int) -> list[str]:
    """Where in the model each stage reads: "embedding", then "0.attention", "0.mlp", "1.attention", ..."""
    return ["embedding"] + [f"{layer}.{part}" for layer in range(n_layer) for part in ("attention", "mlp")]


@dataclass
class Lens:
    """S stages, T positions; position t predicts byte t + 1."""

    stages: list[str]
    logprobs: torch.Tensor  # (S, T, vocab) log-probabilities of the next byte
    top_ids: torch.Tensor  # (S, T, k) the k most likely next bytes, most likely first
    top_probs: torch.Tensor  # (S, T, k)
    next_rank: torch.Tensor  # (S, T - 1) rank of the byte that comes next (1 = most likely)
    next_prob: torch.Tensor  # (S, T - 1) its probability
    bits_per_byte: list[float | None]  # per stage, the mean of -log2 p(next byte); None for a one-byte text


@torch.inference_mode()
def logit_lens(model: Transformer, trace: Trace, top_k: int = 5) -> Lens:
    """The lens of a run of the model over a text (model.trace)."""
    if not 1 <= top_k <= model.config.vocab_size:
        raise ValueError(f"top_k must be 1..{model.config.vocab_size}, got {top_k}")
    residuals = torch.stack(trace.residuals)  # (S, T, C)
    logprobs = F.log_softmax(model.lm_head(model.norm(residuals)).float(), dim=-1).cpu()  # (S, T, vocab)
    top_logprobs, top_ids = logprobs.topk(top_k, dim=-1)  # (S, T, k)
    following = torch.tensor(trace.ids[1:], dtype=torch.long)  # (T - 1,)
    S = logprobs.shape[0]
    chosen = logprobs[:, :-1].gather(-1, following.expand(S, -1).unsqueeze(-1))  # (S, T - 1, 1)
    next_rank = (logprobs[:, :-1] > chosen).sum(-1) + 1  # (S, T - 1)
    nats = -chosen.squeeze(-1).mean(-1)  # (S,)
    return Lens(
        stages=stage_names(model.config.n_layer),
        logprobs=logprobs,
        top_ids=top_ids,
        top_probs=top_logprobs.exp(),
        next_rank=next_rank,
        next_prob=chosen.squeeze(-1).exp(),
        bits_per_byte=[float(n) / math.log(2) for n in nats] if len(trace.ids) > 1 else [None] * S,
    )
