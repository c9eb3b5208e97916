"""A training run's checkpoint: which model --out decides, resuming from it, and saving a step into it.

Beyond the weights (model/checkpoint.py), training writes training.json (what was trained on, how, and the
losses), optimizer.pt (for --resume only) and the metrics; all go through checkpoint.save's atomic swap, so a
kill at any moment leaves a checkpoint whose files agree with each other.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import torch

from model import checkpoint, json_file
from model.config import ModelConfig
from model.model import Transformer
from model.train_eval import LN2
from model.train_setup import Processes, TrainError


def choose_config(args, flags_config: ModelConfig) -> tuple[ModelConfig, Path | None]:
    """The model to train, and the checkpoint folder to resume from (None for a new run).

    --resume takes the checkpoint's config (and its context length); otherwise a checkpoint already in --out
    is refused unless --overwrite.
    """
    if checkpoint.exists(args.out):
        saved = checkpoint.load_config(args.out)
        if args.resume:
            args.context_length = saved.context_length
            return saved, checkpoint.resolve(args.out)
        if args.overwrite:
            return flags_config, None
        if saved != flags_config:
            raise TrainError(
                f"{args.out} holds a checkpoint of a different model ({saved}); "
                "pass --resume to continue it, --overwrite to replace it, or choose another --out"
            )
        raise TrainError(
            f"{args.out} already holds a checkpoint; pass --resume to continue it or --overwrite to replace it"
        )
    if args.resume:
        raise TrainError(f"--resume: no checkpoint in {args.out}")
    return flags_config, None


def resume_training(resumed: Path | None, optimizer, device) -> tuple[int, dict, list[dict]]:
    """Load the optimizer's state; returns the step to start from, the saved training.json, the metrics rows."""
    if not resumed:
        return 0, {}, []
    if not (resumed / checkpoint.OPTIMIZER).exists():
        raise TrainError(
            f"{resumed / checkpoint.OPTIMIZER}: missing; --resume needs the optimizer state "
            "that training saves (this checkpoint was not written by tinyllm-train)"
        )
    state = torch.load(resumed / checkpoint.OPTIMIZER, map_location=device, weights_only=True)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:  # another --optimizer than the checkpoint's
        raise TrainError(f"--resume: {e}") from e
    history = checkpoint.load_training(resumed)
    step = history["step"]
    rows = []
    if (resumed / "metrics.jsonl").exists():
        lines = (resumed / "metrics.jsonl").read_text().splitlines()
        rows = [r for r in (json_file.loads(line) for line in lines if line.strip()) if r["step"] <= step]
    return step, history, rows


class TrainingCheckpoint:
    """Saves the run's model, optimizer and metrics into --out, with training.json describing them."""

    def __init__(self, args, model: Transformer, optimizer, procs: Processes, *, data_record, bytes_per_step, history):
        self.args, self.model, self.optimizer, self.procs = args, model, optimizer, procs
        self.data_record, self.bytes_per_step = data_record, bytes_per_step
        self.earlier_wall_time = history.get("wall_time_s", 0.0)  # of the runs this one resumes
        self.run: dict = {}

    def record_run(self, **facts) -> None:
        """How this run trains (its schedule, optimizers, compiling): recorded in training.json."""
        self.run.update(facts)

    def save(self, step: int, val_loss: float, train_loss: float, wall: float, files: dict[str, bytes]) -> None:
        """Save after `step`; `wall` is this run's seconds so far, `files` the metrics (inside the same swap)."""
        checkpoint.save(
            self.args.out,
            self.model,
            self.training_record(step, val_loss, train_loss, wall),
            {"optimizer": self.optimizer.state_dict()},
            extra_files=files,
        )

    def training_record(self, step: int, val_loss: float, train_loss: float, wall: float) -> dict:
        """training.json."""
        device = self.procs.device
        return {
            "step": step,
            "bytes_seen": step * self.bytes_per_step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_bits_per_byte": train_loss / LN2,
            "val_bits_per_byte": val_loss / LN2,
            "data": self.data_record,
            "command": shlex.join(sys.orig_argv),  # as typed, e.g. python -m model.train ...
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "wall_time_s": round(self.earlier_wall_time + wall, 3),
            "torch_version": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "processes": self.procs.world,
            "num_params": self.model.num_params(),
            **self.run,
        }
