"""Where a training run happens: one process or several under torchrun (DDP), on which device, with which model.

`TrainError` is any problem with the command line or the data; `tinyllm-train` reports it as one line.
"""

from __future__ import annotations

import math
import os
import shutil
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

    def agreed(self, seconds: float) -> float:
        """The largest of every process's `seconds`: they must agree on the schedule and stop at the same step."""
        if not self.ddp:
            return seconds
        tensor = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

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


COMPILE_PAYS_MINUTES = 3  # --compile auto: a run this long or longer (time budget, or steps at eager speed) compiles
COMPILE_PAYS_STEPS = 3000


def should_compile(args, device: torch.device) -> tuple[bool, str]:
    """Whether to torch.compile the model, and why. `auto` compiles a run long enough for the faster steps to win
    back the compiling time (on this project's 2-core CPU at the nanoGPT CPU-recipe dims: ~30 s of compiling for
    steps ~20% faster: docs/benchmarks/training.md), and only where inductor can build its kernels (a C++ compiler on
    a CPU)."""
    if args.compile != "auto":
        return args.compile == "yes", args.compile
    if device.type == "cpu" and not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        return False, "no (auto: no C++ compiler for inductor's CPU kernels)"
    long_run = (args.max_minutes or 0) >= COMPILE_PAYS_MINUTES or (
        args.max_minutes is None and args.max_steps >= COMPILE_PAYS_STEPS
    )
    if not long_run:
        return (
            False,
            f"no (auto: runs under {COMPILE_PAYS_MINUTES} minutes or {COMPILE_PAYS_STEPS} steps do not win it back)",
        )
    return True, "yes (auto: a long run)"


def config_from_flags(args) -> ModelConfig:
    """The model the flags describe (a resumed run takes the checkpoint's instead: see train_checkpoint)."""
    # SwiGLU at 8/3 d_model has the multiply-adds of a 4 d_model GELU MLP; 32 is what int8 and GGUF Q8_0 group by
    mlp_hidden = args.mlp_hidden or 32 * math.ceil(8 * args.d_model / 3 / 32)
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
