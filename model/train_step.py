"""One optimizer step and its schedule: AdamW, warmup then cosine decay, gradient accumulation.

A step's batches come from a generator seeded by (seed, rank, step, micro-batch) and its dropout masks from
a seed of (seed, step, rank), never from state carried between steps: so a resumed run takes the same steps.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn import functional as F

from model.train_data import get_batch
from model.train_setup import Processes


def make_optimizer(model: torch.nn.Module, weight_decay: float, lr: float, device: torch.device):
    """AdamW; weight decay on the matrices only (not on norm scales)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.99),
        fused=device.type == "cuda",
    )


def lr_at(step: int, args) -> float:
    """Linear warmup, then cosine decay from lr to min_lr over lr_decay_steps."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    decay = args.lr_decay_steps or args.max_steps
    if step >= decay:
        return args.min_lr
    ratio = (step - args.warmup_steps) / max(1, decay - args.warmup_steps)
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


def train_step(model, optimizer, data: np.ndarray, step: int, lr: float, args, procs: Processes) -> torch.Tensor:
    """Take optimizer step `step` at learning rate `lr`; returns the mean loss of its batches (on the device)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(args.seed * 1_000_003 + step * 97 + procs.rank)  # dropout masks, reproducible on resume
    loss_sum = torch.zeros((), device=procs.device)
    for micro in range(args.grad_accum):
        rng = np.random.default_rng([args.seed, procs.rank, step, micro])
        x, y = get_batch(data, args.batch_size, args.context_length, rng, procs.device)
        # DDP averages the gradients across processes once, after the last micro-batch
        sync = not procs.ddp or micro == args.grad_accum - 1
        with nullcontext() if sync else model.no_sync(), procs.autocast:
            logits, _ = model(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1)) / args.grad_accum
        loss.backward()
        loss_sum += loss.detach()
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum
