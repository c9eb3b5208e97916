"""What a training step updates the weights with: AdamW alone, or Muon for the blocks' matrices beside AdamW.

Muon (Jordan et al. 2024; `torch.optim.Muon`) orthogonalizes each matrix's momentum by a Newton–Schulz
iteration; it suits the hidden matrices only, so, as the NanoGPT speedrun splits them, the embeddings, the
output head and the norm scales stay with AdamW. torch's Muon runs that iteration in bfloat16, which a CPU
without bfloat16 instructions (no AVX512-BF16 or AMX) emulates at about three times float32's cost; there
`Muon` below runs the same iteration in float32, batched over matrices of the same shape.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch

OPTIMIZERS = ("muon", "adamw")
MUON_LR = 0.02  # Muon's peak rate for the blocks' matrices (scaled by sqrt(max(1, rows/cols)), as torch's is)


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively here (CUDA, or a CPU with bfloat16 instructions)."""
    return device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton–Schulz iteration, in g's dtype, for a stack of matrices (N, rows, cols)."""
    a, b, c = coefficients
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g  # (N, small, large): the Gram matrices are small × small
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its defaults, options and state_dict), with the Newton–Schulz iteration in float32 where
    bfloat16 has no fast path. A subclass, not an option: torch 2.13's Muon casts to bfloat16 unconditionally."""

    def __init__(self, params, *, float32: bool, **options):
        super().__init__(params, **options)
        self.float32 = float32

    @torch.no_grad()
    def step(self, closure=None):
        if not self.float32:
            return super().step(closure)
        for group in self.param_groups:
            same_shape = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    same_shape[p.shape].append(p)
            for shape, params in same_shape.items():
                self._update(group, shape, params)

    def _update(self, group: dict, shape: torch.Size, params: list[torch.Tensor]) -> None:
        """torch's single-tensor Muon update for a stack of same-shape matrices."""
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        grads = torch.stack([p.grad for p in params])
        momentum = torch.stack(bufs).lerp_(grads, 1 - group["momentum"])
        torch._foreach_copy_(bufs, list(momentum.unbind()))
        update = grads.lerp_(momentum, group["momentum"]) if group["nesterov"] else momentum
        update = newton_schulz(update.float(), group["ns_coefficients"], group["ns_steps"], group["eps"])
        lr = group["lr"] * scale_for(shape, group["adjust_lr_fn"])
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_add_(params, list(update.unbind()), alpha=-lr)


def scale_for(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """torch.optim.Muon's per-matrix learning-rate scale."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class Optimizers:
    """Several optimizers stepped as one: the loop sets each group's rate from its `peak_lr`, steps, saves."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers.values() for g in o.param_groups]

    def set_lr(self, factor: float) -> None:
        """Every group at `factor` times its peak rate (the schedule's value)."""
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * factor

    def step(self) -> None:
        for o in self.optimizers.values():
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: o.state_dict() for name, o in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        """Resume; the peak rates stay this run's (the command line's)."""
        if "param_groups" in state:  # saved before Muon: one AdamW's state
            state = {"adamw": state}
        if set(state) != set(self.optimizers):
            raise ValueError(
                f"the checkpoint was trained with {'+'.join(state)}, this run uses {'+'.join(self.optimizers)}"
            )
        peaks = [g["peak_lr"] for g in self.param_groups]
        for name, o in self.optimizers.items():
            o.load_state_dict(state[name])
        for group, peak in zip(self.param_groups, peaks):
            group["peak_lr"] = peak

    def describe(self) -> dict:
        """What training.json records: each optimizer, its settings and what it updates."""
        return {
            name: {
                "class": f"{type(o).__module__}.{type(o).__qualname__}",
                **({"newton_schulz_dtype": "float32" if o.float32 else "bfloat16"} if isinstance(o, Muon) else {}),
                "groups": [
                    {k: v for k, v in g.items() if k not in ("params", "lr")} | {"tensors": len(g["params"])}
                    for g in o.param_groups
                ],
            }
            for name, o in self.optimizers.items()
        }


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """The blocks' 2-D weights (attention and MLP projections): Muon's share."""
    return p.dim() == 2 and name.startswith("layers.")


def make_optimizer(model: torch.nn.Module, args, device: torch.device) -> Optimizers:
    """AdamW (betas 0.9, 0.99; weight decay on matrices only), with Muon taking the blocks' matrices when
    --optimizer muon. Each group keeps its `peak_lr`, which the schedule scales."""
    named = list(model.named_parameters())
    muon = args.optimizer == "muon"
    to_muon = [p for n, p in named if muon and is_hidden_matrix(n, p)]
    decay = [p for n, p in named if p.dim() >= 2 and not (muon and is_hidden_matrix(n, p))]
    no_decay = [p for _, p in named if p.dim() < 2]
    adamw = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay, "peak_lr": args.lr},
            {"params": no_decay, "weight_decay": 0.0, "peak_lr": args.lr},
        ],
        lr=args.lr,
        betas=(0.9, 0.99),
        fused=device.type == "cuda",
    )
    if not muon:
        return Optimizers({"adamw": adamw})
    muon_opt = Muon(
        [{"params": to_muon, "peak_lr": args.muon_lr}],
        lr=args.muon_lr,
        weight_decay=0.0,
        float32=not fast_bfloat16(device),
    )
    return Optimizers({"muon": muon_opt, "adamw": adamw})


@dataclass(frozen=True)
class Schedule:
    """The learning rate, as a factor of each group's peak, over the run: a linear warmup over `warmup_steps`, then
    either warmup-stable-decay (`wsd`: the peak until the last `decay_fraction` of the run, then linear down to
    `final`) or cosine down to `final`.

    Where the run is, `progress` in [0, 1], is the larger of its share of the steps and its share of the time
    budget (compiling and evaluations included): a run stopped by --max-minutes ends decayed, whatever its
    step rate. A run of steps alone is deterministic, as --resume needs.
    """

    shape: str
    warmup_steps: int
    decay_fraction: float
    final: float
    steps: float  # the schedule's length in steps (inf: time alone)
    seconds: float  # ... in seconds (inf: steps alone)
    max_steps: float  # where the run stops, in steps (--max-steps; the time budget stops it too)

    def progress(self, step: int, elapsed: float) -> float:
        return min(1.0, max(step / self.steps, elapsed / self.seconds))

    def finished(self, step: int, elapsed: float) -> bool:
        return step >= self.max_steps or elapsed >= self.seconds

    def factor(self, step: int, progress: float) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.shape == "cosine":
            return warmup * (self.final + 0.5 * (1 + math.cos(math.pi * progress)) * (1 - self.final))
        decay_from = 1 - self.decay_fraction
        if progress <= decay_from:
            return warmup
        return warmup * (1 - (1 - self.final) * (progress - decay_from) / self.decay_fraction)

    def describe(self) -> dict:
        return {k: (None if v == math.inf else v) for k, v in asdict(self).items()}


SCHEDULES = ("wsd", "cosine")
DEFAULT_STEPS = 5000  # --max-steps of a run with neither --max-steps nor --max-minutes


def make_schedule(args) -> Schedule:
    """The run's schedule from the flags: its length in steps (--lr-decay-steps, else --max-steps) and in time."""
    max_steps = args.max_steps or math.inf  # no --max-steps: --max-minutes alone stops the run
    return Schedule(
        shape=args.schedule,
        warmup_steps=args.warmup_steps,
        decay_fraction=args.decay_fraction,
        final=args.min_lr / args.lr,
        steps=args.lr_decay_steps or max_steps,
        seconds=args.max_minutes * 60 if args.max_minutes is not None else math.inf,
        max_steps=max_steps,
    )
