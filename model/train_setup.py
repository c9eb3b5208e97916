"""Where a training run happens: one process or several under torchrun (DDP), on which device, with which model.

`TrainError` is any problem with the command line or the data; `tinyllm-train` reports it as one line.
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from model.config import ModelConfig


class TrainError(Exception):
    """A problem with the command line or the data; reported as one line."""


@dataclass
class Processes:
    """This process's place in the run: its rank among `world` processes, its device and autocast."""

    ddp: bool
    rank: int
    world: int
    device: torch.device
    autocast: AbstractContextManager

    @property
    def master(self) -> bool:
        """Rank 0 evaluates, logs and saves; the others only train."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, compile: bool) -> torch.nn.Module:
        """The model the steps run: compiled if asked, inside DistributedDataParallel under torchrun."""
        if compile:
            model = torch.compile(model)
        if self.ddp:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        return model

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on one: they must agree to stop at the same step."""
        if not self.ddp:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()

    def close(self) -> None:
        if self.ddp:
            dist.destroy_process_group()


def start_processes(args) -> Processes:
    """Join the process group when torchrun started us (RANK is set), and choose the device."""
    ddp = "RANK" in os.environ
    if ddp:
        backend = "nccl" if args.device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda but no CUDA device is available")
        if ddp:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    return Processes(ddp, rank, world, device, autocast)


def config_from_flags(args) -> ModelConfig:
    """The model the flags describe (a resumed run takes the checkpoint's instead: see train_checkpoint)."""
    mlp_hidden = args.mlp_hidden or 64 * math.ceil(8 * args.d_model / 3 / 64)
    try:
        return ModelConfig(
            context_length=args.context_length,
            n_layer=args.n_layer,
            n_head=args.n_head,
            d_model=args.d_model,
            mlp_hidden=mlp_hidden,
            tie_embeddings=args.tie_embeddings,
            dropout=args.dropout,
        )
    except ValueError as e:
        raise TrainError(str(e)) from e
