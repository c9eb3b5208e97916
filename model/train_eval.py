"""What training measures and records: the loss on held-out windows, a sample, metrics.jsonl and loss.png."""

from __future__ import annotations

import copy
import io
import math
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from model import json_file
from model.detectors import probe_scores
from model.generate import generate
from model.model import Transformer
from model.runner import Runner
from model.sampling import SamplingParams
from model.train_setup import Processes

LN2 = math.log(2)
EVAL_BATCH = 64  # windows per forward pass when evaluating: larger matrix products than a small training batch


@torch.no_grad()
def evaluate(model, data: np.ndarray, ctx: int, max_windows: int, batch: int, device, autocast) -> float:
    """Mean loss in nats/byte over non-overlapping context windows (evenly spread if more than max_windows)."""
    starts = np.arange(0, data.size - ctx, ctx)
    if starts.size > max_windows:
        starts = starts[np.linspace(0, starts.size - 1, max_windows).astype(int)]
    model.eval()
    total, count = 0.0, 0
    for i in range(0, starts.size, batch):
        s = starts[i : i + batch]
        x = torch.from_numpy(np.stack([data[j : j + ctx] for j in s]).astype(np.int64)).to(device)
        y = torch.from_numpy(np.stack([data[j + 1 : j + 1 + ctx] for j in s]).astype(np.int64)).to(device)
        with autocast:
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def sample_text(model: Transformer, prompt: bytes, n: int, seed: int) -> str:
    runner = Runner(copy.deepcopy(model).eval())
    out = [s.token for s in generate(runner, list(prompt), n, SamplingParams(temperature=0.8), seed)]
    return (prompt + bytes(out)).decode("utf-8", errors="replace")


def evaluation_row(model: Transformer, step: int, train_data, val_data, args, procs: Processes, write) -> dict:
    """Both splits' loss and a sample after `step`, as a metrics.jsonl row; written (`write`) too."""
    ctx = model.config.context_length
    batch = max(args.batch_size, EVAL_BATCH)
    val_loss = evaluate(model, val_data, ctx, args.eval_windows, batch, procs.device, procs.autocast)
    train_loss = evaluate(model, train_data, ctx, args.eval_windows, batch, procs.device, procs.autocast)
    text = sample_text(model, b"\n", args.sample_bytes, args.seed) if args.sample_bytes else ""
    induction = induction_scores(model)
    write(
        f"step {step}: train {train_loss:.4f} nats/byte ({train_loss / LN2:.3f} bits), "
        f"val {val_loss:.4f} nats/byte ({val_loss / LN2:.3f} bits), induction {induction.max():.3f}"
        + (f"\n  sample: {text!r}" if text else "")
    )
    return {
        "step": step,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "train_bits_per_byte": train_loss / LN2,
        "val_bits_per_byte": val_loss / LN2,
        "sample": text,
        "induction_score": float(induction.max()),  # the best head's (model/detectors.py probe_scores)
        "induction_scores": induction.round(4).tolist(),  # [layer][head]
    }


def induction_scores(model: Transformer) -> np.ndarray:
    """Every head's induction score on the repeated random probe (model.detectors), (n_layer, n_head): the moment
    induction heads form shows as a jump (Olsson et al. 2022)."""
    model.eval()
    try:
        return probe_scores(model, batch=2)["induction_probe"]
    finally:
        model.train()


class Progress:
    """The run's progress: a tqdm bar on a terminal; elsewhere (a log file, a pipe) a plain line at most every
    LINE_EVERY_S seconds, where a bar's carriage-return redraws would fill the log (megabytes in 10 minutes)."""

    LINE_EVERY_S = 10.0

    def __init__(self, schedule, step: int):
        total = schedule.max_steps if math.isfinite(schedule.max_steps) else None
        self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True) if sys.stderr.isatty() else None
        self.last_line = time.time()

    def write(self, text: str) -> None:
        tqdm.write(text)  # above the bar, if there is one

    def update(self, step: int, elapsed: float, shown: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(**shown)
        elif time.time() - self.last_line >= self.LINE_EVERY_S:
            self.last_line = time.time()
            self.write(f"step {step} ({elapsed:.0f} s): " + ", ".join(f"{k} {v}" for k, v in shown.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Metrics:
    """The rows of metrics.jsonl: a step's loss every --log-every steps, and every evaluation's row.

    They are saved inside each checkpoint (with loss.png drawn from them), so they always match it.
    """

    def __init__(self, rows: list[dict], step: int, bytes_per_step: int):
        self.rows = rows  # a resumed run's rows up to its step
        self.bytes_per_step = bytes_per_step
        self.last_time, self.last_step = time.time(), step

    def log_step(self, step: int, lr: float, loss: float) -> dict:
        """Add the step's row; returns what the progress bar shows."""
        now = time.time()
        rate = (step - self.last_step) * self.bytes_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        self.rows.append(
            {"step": step, "lr": lr, "loss": loss, "bits_per_byte": loss / LN2, "bytes_per_s": round(rate)}
        )
        return {"loss": f"{loss:.3f}", "bpb": f"{loss / LN2:.3f}", "bytes_s": f"{rate:,.0f}"}

    def files(self) -> dict[str, bytes]:
        """metrics.jsonl and loss.png, for the checkpoint folder."""
        metrics = "".join(json_file.dumps(r) + "\n" for r in self.rows).encode()
        return {"metrics.jsonl": metrics, "loss.png": plot_losses(self.rows)}


def plot_losses(rows: list[dict]) -> bytes:
    """loss.png of the metrics.jsonl rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="train (batch)")
    ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)")
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/byte)")
    ax.grid(alpha=0.3)
    with_induction = [r for r in evals if "induction_score" in r]
    if with_induction:  # on its own axis: a share in [0, 1]
        right = ax.twinx()
        right.plot(
            [r["step"] for r in with_induction],
            [r["induction_score"] for r in with_induction],
            "s--",
            color="tab:red",
            label="induction score (best head)",
        )
        right.set_ylim(0, 1)
        right.set_ylabel("induction score")
        right.legend(loc="upper center")
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()
