"""Direct logit attribution: how much each head, each MLP and the embedding push one byte's logit.

The residual stream at the last block's output is a sum of writes: x = embedding + Σ_layers (Σ_heads z_h·W_O,hᵀ
+ MLP output). The final norm is RMSNorm with a weight w and no mean subtraction, norm(x) = w ⊙ x · s with
s = 1/√(mean(x²) + ε), and lm_head has no bias, so target t's logit is

    logit_t = s · (W_U[t] ⊙ w) · x = Σ_writes s · (W_U[t] ⊙ w) · write

Freezing s at its value in the run (the "scale"), every write's push is exactly linear and the pushes sum to the
logit. For LayerNorm the mean subtraction would leave a constant (the mean of the writes, read by W_U[t] ⊙ w);
RMSNorm subtracts nothing, so that constant is zero and the residual error is float rounding alone.

`attribute` does this for several positions of one run (model.trace); `split_logits` is the arithmetic, for rows
of the residual stream however they were computed. `Attribution.top(n)` gives the n largest pushes, which is what
a per-token "explain" of generation needs: for the byte just generated (the last of ids, predicted at the position
before it), `attribute(model, run(model, ids), [len(ids) - 2])[0].top(n)`, a whole forward pass per byte; or
`split_logits` on what an exact decode step kept at its one new position, no more than the step itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.model import Transformer
from model.trace import Trace


@dataclass(frozen=True)
class Contribution:
    kind: str  # "embedding", "head" or "mlp"
    layer: int | None
    head: int | None
    logit: float  # its push on the target's logit


@dataclass
class Attribution:
    position: int
    target: int  # the byte whose logit is split
    logit: float  # the model's logit of target at position
    scale: float  # the final norm's 1/√(mean(x²) + ε) at position, from the run
    embedding: float
    heads: torch.Tensor  # (n_layer, n_head)
    mlps: torch.Tensor  # (n_layer,)

    @property
    def total(self) -> float:
        return self.embedding + float(self.heads.double().sum() + self.mlps.double().sum())

    @property
    def error(self) -> float:
        """The logit minus the sum of the pushes."""
        return self.logit - self.total

    def contributions(self) -> list[Contribution]:
        heads = [
            Contribution("head", layer, head, float(v))
            for layer, row in enumerate(self.heads.tolist())
            for head, v in enumerate(row)
        ]
        mlps = [Contribution("mlp", layer, None, v) for layer, v in enumerate(self.mlps.tolist())]
        return [Contribution("embedding", None, None, self.embedding), *heads, *mlps]

    def top(self, n: int) -> list[Contribution]:
        """The n largest pushes by size, either sign, largest first."""
        return sorted(self.contributions(), key=lambda c: -abs(c.logit))[:n]


@torch.inference_mode()
def attribute(
    model: Transformer, trace: Trace, positions: Sequence[int], targets: Sequence[int | None] | None = None
) -> list[Attribution]:
    """Per position of a run of the model (model.trace), the pushes on its target's logit (a target of None: the
    byte that comes next in the text)."""
    cfg, ids = model.config, trace.ids
    T = len(ids)
    targets = list(targets) if targets is not None else [None] * len(positions)
    if len(targets) != len(positions):
        raise ValueError(f"{len(positions)} positions but {len(targets)} targets")
    for i, (p, t) in enumerate(zip(positions, targets)):
        if not 0 <= p < T:
            raise ValueError(f"position {p} out of range: valid indices are 0..{T - 1}")
        if t is None and p == T - 1:
            raise ValueError(f"nothing comes after position {p}, the last byte: name a target")
        if t is not None and not 0 <= t < cfg.vocab_size:
            raise ValueError(f"target {t} is not a byte (0..{cfg.vocab_size - 1})")
        targets[i] = ids[p + 1] if t is None else t

    pos = torch.tensor(list(positions), device=trace.logits.device)  # (P,)
    return split_logits(
        model,
        positions=list(positions),
        targets=targets,
        embedding=trace.residuals[0][pos],
        z=[z[pos] for z in trace.z],
        mlp=[out[pos] for out in trace.mlp],
        final=trace.residuals[-1][pos],
    )


@torch.inference_mode()
def split_logits(
    model: Transformer,
    positions: list[int],
    targets: list[int],
    embedding: torch.Tensor,
    z: list[torch.Tensor],
    mlp: list[torch.Tensor],
    final: torch.Tensor,
) -> list[Attribution]:
    """The pushes on targets' logits at P rows of the residual stream, from what a pass kept at those rows: the
    embedding (P, C), per layer each head's output z (P, nh, hs) and the MLP's output (P, C), and the stream after
    the last block, final (P, C). `attribute` takes them from a trace; a pass over only the newest position (a
    decode step of the exact model that keeps them) can call it as well."""
    cfg = model.config
    tgt = torch.tensor(targets, device=final.device)  # (P,)
    x = final.float()  # (P, C)
    scale = torch.rsqrt(x.pow(2).mean(-1) + model.norm.eps)  # (P,) as RMSNorm computes it
    reads = (model.lm_head.weight[tgt] * model.norm.weight).float()  # (P, C): what each target's logit reads

    def push(writes: torch.Tensor) -> torch.Tensor:  # (P, C) -> (P,)
        return (writes.float() * reads).sum(-1) * scale

    mlps = torch.stack([push(out) for out in mlp], dim=1).cpu()  # (P, n_layer)
    heads = []
    for layer, block in enumerate(model.layers):
        w_o = block.self_attn.o_proj.weight.float().view(cfg.d_model, cfg.n_head, cfg.head_dim)  # (C, nh, hs)
        per_head = torch.einsum("pc,cnd->pnd", reads, w_o)  # (P, nh, hs): each head's output read by the target
        heads.append((z[layer].float() * per_head).sum(-1) * scale[:, None])  # (P, nh)
    heads = torch.stack(heads, dim=1).cpu()  # (P, n_layer, nh)
    logits = model.lm_head(model.norm(final)).gather(-1, tgt[:, None])[:, 0].float().cpu()  # the model's own
    embedding, scale = push(embedding).cpu(), scale.cpu()
    return [
        Attribution(
            position=positions[i],
            target=targets[i],
            logit=float(logits[i]),
            scale=float(scale[i]),
            embedding=float(embedding[i]),
            heads=heads[i],
            mlps=mlps[i],
        )
        for i in range(len(positions))
    ]
