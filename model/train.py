"""Train a byte-level model on any files and write a checkpoint folder.

    tinyllm-train --data ../shared/data/tinyshakespeare.txt --out checkpoints/mine --max-minutes 10
    torchrun --nproc-per-node 2 -m model.train --data FILE --out DIR      # DistributedDataParallel

Every batch and dropout mask comes from a generator seeded by (seed, rank, step), so `--resume`
continues exactly where a run stopped: N steps, then N more resumed, equal 2N steps in one run.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import os
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from model import checkpoint
from model.config import ModelConfig
from model.generate import generate
from model.model import Transformer
from model.runner import Runner
from model.sampling import SamplingParams

LN2 = math.log(2)


class TrainError(Exception):
    """A problem with the command line or the data; reported as one line."""


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tinyllm-train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = ModelConfig()
    g = p.add_argument_group("data and output")
    g.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="PATH",
        help="a file or folder of any bytes; repeatable. The last 10%% of each file is held out "
        "for validation unless --val-data is given",
    )
    g.add_argument("--val-data", action="append", metavar="PATH", help="validation files or folders; repeatable")
    g.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    g.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    g.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    g = p.add_argument_group("model")
    g.add_argument("--n-layer", type=int, default=d.n_layer)
    g.add_argument("--n-head", type=int, default=d.n_head)
    g.add_argument("--d-model", type=int, default=d.d_model)
    g.add_argument("--mlp-hidden", type=int, help="SwiGLU width (default: 8/3 d_model rounded up to 64)")
    g.add_argument("--context-length", type=int, default=d.context_length)
    g.add_argument("--tie-embeddings", action="store_true")
    g.add_argument("--dropout", type=float, default=0.0)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, default=32, help="sequences per micro-batch per process")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="final learning rate (default: lr / 10)")
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--lr-decay-steps", type=int, help="length of the cosine schedule (default: --max-steps)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--max-steps", type=positive_int, default=5000)
    g.add_argument("--max-minutes", type=float, help="stop (and save) after this much wall-clock time")
    g = p.add_argument_group("evaluation and runtime")
    g.add_argument("--eval-every", type=positive_int, default=250)
    g.add_argument("--eval-windows", type=positive_int, default=256, help="at most this many context windows per split")
    g.add_argument(
        "--save",
        choices=["last", "best"],
        default="last",
        help="at each evaluation save the latest model, or only one with a new best validation loss "
        "(small data overfits: nanoGPT keeps the best)",
    )
    g.add_argument("--log-every", type=positive_int, default=10)
    g.add_argument("--sample-bytes", type=int, default=120, help="length of the sample printed at each evaluation")
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    return p.parse_args(argv)


# ---------------------------------------------------------------- data


def list_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise TrainError(f"data path not found: {p}")
    if not files:
        raise TrainError(f"no files under {', '.join(paths)}")
    return files


def read_bytes(f: Path) -> np.ndarray:
    data = np.fromfile(f, dtype=np.uint8)
    if data.size == 0:
        raise TrainError(f"data file is empty: {f}")
    return data


def load_data(args) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Train and validation bytes, and a record (name, bytes, sha256) of every file read."""
    train, val, record = [], [], []
    for f in list_files(args.data):
        data = read_bytes(f)
        record.append({"path": str(f), "bytes": int(data.size), "sha256": hashlib.sha256(data).hexdigest()})
        if args.val_data:
            train.append(data)
        else:
            cut = int(data.size * 0.9)
            train.append(data[:cut])
            val.append(data[cut:])
    for f in list_files(args.val_data or []) if args.val_data else []:
        data = read_bytes(f)
        record.append(
            {"path": str(f), "bytes": int(data.size), "sha256": hashlib.sha256(data).hexdigest(), "split": "val"}
        )
        val.append(data)
    train, val = np.concatenate(train), np.concatenate(val)
    need = args.context_length + 1
    for name, split in (("training", train), ("validation", val)):
        if split.size < need:
            raise TrainError(
                f"context length {args.context_length} is larger than the {name} data "
                f"({split.size} bytes); use a shorter --context-length or more data"
            )
    return train, val, record


def get_batch(data: np.ndarray, batch: int, ctx: int, rng: np.random.Generator, device):
    ix = rng.integers(0, data.size - ctx, size=batch)  # the last window's target ends on the last byte
    x = torch.from_numpy(np.stack([data[i : i + ctx] for i in ix]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[i + 1 : i + 1 + ctx] for i in ix]).astype(np.int64))
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


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


def lr_at(step: int, args) -> float:
    """Linear warmup, then cosine decay from lr to min_lr over lr_decay_steps."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    decay = args.lr_decay_steps or args.max_steps
    if step >= decay:
        return args.min_lr
    ratio = (step - args.warmup_steps) / max(1, decay - args.warmup_steps)
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


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
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()


# ---------------------------------------------------------------- training


def main(argv=None) -> None:
    try:
        train(parse_args(argv))
    except (TrainError, checkpoint.CheckpointError) as e:
        sys.exit(f"tinyllm-train: error: {e}")


def train(args) -> None:
    t_start = time.time()
    ddp = "RANK" in os.environ
    if ddp:
        backend = "nccl" if args.device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    master = rank == 0
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
    args.min_lr = args.lr / 10 if args.min_lr is None else args.min_lr

    # Configuration: from the checkpoint when resuming, else from the flags.
    mlp_hidden = args.mlp_hidden or 64 * math.ceil(8 * args.d_model / 3 / 64)
    try:
        cfg = ModelConfig(
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
    start_step, resumed = 0, None
    if checkpoint.exists(args.out):
        saved = checkpoint.load_config(args.out)
        if args.resume:
            cfg, resumed = saved, checkpoint.resolve(args.out)
            args.context_length = cfg.context_length
        elif args.overwrite:
            pass
        elif saved != cfg:
            raise TrainError(
                f"{args.out} holds a checkpoint of a different model ({saved}); "
                "pass --resume to continue it, --overwrite to replace it, or choose another --out"
            )
        else:
            raise TrainError(
                f"{args.out} already holds a checkpoint; pass --resume to continue it or --overwrite to replace it"
            )
    elif args.resume:
        raise TrainError(f"--resume: no checkpoint in {args.out}")

    train_data, val_data, data_record = load_data(args)
    torch.manual_seed(args.seed)  # the same initial weights on every process
    model = Transformer(cfg)
    if resumed:
        model.load_state_dict(checkpoint.load_state_dict(resumed, cfg), strict=not cfg.tie_embeddings)
    model.to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.99),
        fused=device.type == "cuda",
    )
    history = {}
    if resumed:
        if not (resumed / checkpoint.OPTIMIZER).exists():
            raise TrainError(
                f"{resumed / checkpoint.OPTIMIZER}: missing; --resume needs the optimizer state "
                "that training saves (this checkpoint was not written by tinyllm-train)"
            )
        state = torch.load(resumed / checkpoint.OPTIMIZER, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        history = checkpoint.load_training(resumed)
        start_step = history["step"]
    raw_model = model
    if args.compile:
        model = torch.compile(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    bytes_per_step = args.batch_size * args.context_length * args.grad_accum * world
    log_rows = []  # metrics.jsonl, rewritten with every checkpoint so it always matches it
    if resumed and (resumed / "metrics.jsonl").exists():
        rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines() if line.strip()]
        log_rows = [r for r in rows if r["step"] <= start_step]
    if master:
        tqdm.write(f"model: {raw_model.num_params():,} parameters, {cfg}")
        tqdm.write(
            f"data: {train_data.size:,} training bytes, {val_data.size:,} validation bytes; "
            f"{bytes_per_step:,} bytes/step on {world} process(es), device {device}"
        )

    def save(step: int, val_loss: float, train_loss: float, wall: float):
        training = {
            "step": step,
            "bytes_seen": step * bytes_per_step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_bits_per_byte": train_loss / LN2,
            "val_bits_per_byte": val_loss / LN2,
            "data": data_record,
            "command": shlex.join(sys.orig_argv),  # as typed, e.g. python -m model.train ...
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "wall_time_s": round(history.get("wall_time_s", 0.0) + wall, 3),
            "torch_version": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "processes": world,
            "num_params": raw_model.num_params(),
        }
        # metrics.jsonl and loss.png travel inside the atomic save, so they always match the checkpoint
        metrics = "".join(json.dumps(r) + "\n" for r in log_rows).encode()
        checkpoint.save(
            args.out,
            raw_model,
            training,
            {"optimizer": optimizer.state_dict()},
            extra_files={"metrics.jsonl": metrics, "loss.png": plot_losses(log_rows)},
        )

    def run_eval(step: int) -> tuple[float, float]:
        val_loss = evaluate(
            raw_model, val_data, cfg.context_length, args.eval_windows, args.batch_size, device, autocast
        )
        train_loss = evaluate(
            raw_model, train_data, cfg.context_length, args.eval_windows, args.batch_size, device, autocast
        )
        return train_loss, val_loss

    model.train()
    bar = tqdm(total=args.max_steps, initial=start_step, disable=not master, unit="step", dynamic_ncols=True)
    step, t_run, t_last, last_log = start_step, time.time(), time.time(), start_step
    train_loss = val_loss = float("nan")
    best_val = history.get("val_loss", float("inf"))  # what the checkpoint in --out already holds
    saved_step = start_step
    while step < args.max_steps:
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(args.seed * 1_000_003 + step * 97 + rank)  # dropout masks, reproducible on resume
        loss_sum = torch.zeros((), device=device)
        for micro in range(args.grad_accum):
            rng = np.random.default_rng([args.seed, rank, step, micro])
            x, y = get_batch(train_data, args.batch_size, cfg.context_length, rng, device)
            sync = not ddp or micro == args.grad_accum - 1
            with nullcontext() if sync else model.no_sync(), autocast:
                logits, _ = model(x)
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1)) / args.grad_accum
            loss.backward()
            loss_sum += loss.detach()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

        out_of_time = args.max_minutes is not None and (time.time() - t_start) / 60 >= args.max_minutes
        if ddp:  # every process must agree to stop at the same step
            flag = torch.tensor([float(out_of_time)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        last = step == args.max_steps or out_of_time

        if master and (step % args.log_every == 0 or last):
            now = time.time()
            loss_val = loss_sum.item()
            rate = (step - last_log) * bytes_per_step / max(now - t_last, 1e-9)
            t_last, last_log = now, step
            log_rows.append(
                {"step": step, "lr": lr, "loss": loss_val, "bits_per_byte": loss_val / LN2, "bytes_per_s": round(rate)}
            )
            bar.set_postfix(loss=f"{loss_val:.3f}", bpb=f"{loss_val / LN2:.3f}", bytes_s=f"{rate:,.0f}")
        if step % args.eval_every == 0 or last:
            if master:
                train_loss, val_loss = run_eval(step)
                text = sample_text(raw_model, b"\n", args.sample_bytes, args.seed) if args.sample_bytes else ""
                row = {
                    "step": step,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "train_bits_per_byte": train_loss / LN2,
                    "val_bits_per_byte": val_loss / LN2,
                    "sample": text,
                }
                log_rows.append(row)
                tqdm.write(
                    f"step {step}: train {train_loss:.4f} nats/byte ({train_loss / LN2:.3f} bits), "
                    f"val {val_loss:.4f} nats/byte ({val_loss / LN2:.3f} bits)"
                    + (f"\n  sample: {text!r}" if text else "")
                )
                if args.save == "last" or val_loss < best_val:
                    save(step, val_loss, train_loss, time.time() - t_run)
                    saved_step, best_val = step, min(best_val, val_loss)
            if ddp:
                dist.barrier()
        if out_of_time:
            if master:
                tqdm.write(f"stopping at step {step}: --max-minutes {args.max_minutes} reached")
            break
    bar.close()
    if master:
        tqdm.write(f"stopped at step {step}; {args.out} holds step {saved_step} (val {best_val:.4f} nats/byte)")
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
