"""One optimizer step: its batches, gradient accumulation, clipping (the optimizers and schedule: train_optim).

A step's batches come from a generator seeded by (seed, rank, step, micro-batch) and its dropout masks from
a seed of (seed, step, rank), never from state carried between steps: so a resumed run takes the same steps.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch.nn import functional as F

from model.train_data import get_batch
from model.train_optim import Optimizers
from model.train_setup import Processes


def train_step(model, optimizer: Optimizers, data: np.ndarray, step: int, factor: float, args, procs: Processes):
    """Take optimizer step `step` at `factor` times the peak rates; returns the mean loss of its batches (a tensor on
    the device: reading it is a host sync, left to the logging steps)."""
    optimizer.set_lr(factor)
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
