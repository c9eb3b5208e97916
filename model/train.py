"""Train a byte-level model on any files and write a checkpoint folder.

    tinyllm-train --data ../shared/data/tinyshakespeare.txt --out checkpoints/mine --max-minutes 10
    torchrun --nproc-per-node 2 -m model.train --data FILE --out DIR      # DistributedDataParallel

Every batch and dropout mask comes from a generator seeded by (seed, rank, step), so `--resume`
continues exactly where a run stopped: N steps, then N more resumed, equal 2N steps in one run.

This file is the command line and the loop; its parts live beside it: train_setup (processes, device,
the model's config), train_data (bytes and batches), train_step (optimizer, learning-rate schedule, one
step), train_eval (validation loss, samples, metrics.jsonl, loss.png), train_checkpoint (resuming, saving).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from model import checkpoint
from model.config import ModelConfig
from model.model import Transformer
from model.train_checkpoint import TrainingCheckpoint, choose_config, resume_training
from model.train_data import load_data
from model.train_eval import Metrics, Progress, evaluation_row
from model.train_optim import DEFAULT_STEPS, MUON_LR, OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from model.train_setup import TrainError, config_from_flags, should_compile, start_processes
from model.train_step import train_step


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
    g.add_argument("--mlp-hidden", type=int, help="SwiGLU width (default: 8/3 d_model rounded up to 32)")
    g.add_argument("--context-length", type=int, default=d.context_length)
    g.add_argument("--tie-embeddings", action="store_true")
    g.add_argument("--dropout", type=float, default=0.0)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, default=32, help="sequences per micro-batch per process")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adamw",
        help="adamw: AdamW alone; muon: Muon for the blocks' matrices, AdamW for the embeddings, output head and "
        "norms (wins per step, loses per second on a CPU at small batches: docs/benchmarks/training.md)",
    )
    g.add_argument("--lr", type=float, default=1e-3, help="AdamW's peak learning rate")
    g.add_argument("--muon-lr", type=float, default=MUON_LR, help="Muon's peak learning rate")
    g.add_argument("--min-lr", type=float, default=0.0, help="AdamW's final learning rate (Muon's in proportion)")
    g.add_argument("--schedule", choices=SCHEDULES, default="wsd", help="warmup, then stable-decay or cosine")
    g.add_argument("--decay-fraction", type=float, default=0.4, help="wsd: the last share of the run that decays")
    g.add_argument("--warmup-steps", type=int, default=100)
    g.add_argument("--lr-decay-steps", type=int, help="the schedule's length in steps (default: --max-steps)")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's, on its matrices")
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument(
        "--max-steps",
        type=positive_int,
        help=f"stop after this many steps (default: {DEFAULT_STEPS} without --max-minutes)",
    )
    g.add_argument(
        "--max-minutes",
        type=float,
        help="stop (and save) after this much wall-clock time, start-up and compiling included; the schedule "
        "fits it: the run ends decayed",
    )
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
    g.add_argument(
        "--compile",
        choices=["auto", "yes", "no"],
        nargs="?",
        const="yes",
        default="auto",
        help="torch.compile the model; auto: where it was measured to pay (see train_setup.should_compile)",
    )
    args = p.parse_args(argv)
    if args.max_steps is None and args.max_minutes is None:
        args.max_steps = DEFAULT_STEPS
    return args


def main(argv=None) -> None:
    try:
        train(parse_args(argv))
    except (TrainError, checkpoint.CheckpointError) as e:
        sys.exit(f"tinyllm-train: error: {e}")


def train(args) -> None:
    t_start = time.time()
    procs = start_processes(args)
    cfg, resumed = choose_config(args, config_from_flags(args))  # a resumed run takes the checkpoint's config
    train_data, val_data, data_record = load_data(args)
    torch.manual_seed(args.seed)  # the same initial weights on every process
    raw_model = Transformer(cfg)
    if resumed:
        raw_model.load_state_dict(checkpoint.load_state_dict(resumed, cfg), strict=not cfg.tie_embeddings)
    raw_model.to(procs.device)
    optimizer = make_optimizer(raw_model, args, procs.device)
    schedule = make_schedule(args)
    start_step, history, rows = resume_training(resumed, optimizer, procs.device)
    compiled, why = should_compile(args, procs.device)
    model = procs.wrap(raw_model, compiled)

    bytes_per_step = args.batch_size * args.context_length * args.grad_accum * procs.world
    saver = TrainingCheckpoint(
        args, raw_model, optimizer, procs, data_record=data_record, bytes_per_step=bytes_per_step, history=history
    )
    saver.record_run(schedule=schedule.describe(), optimizer=optimizer.describe(), compiled=compiled)
    if procs.master:
        log = Progress(schedule, start_step)
        log.write(f"model: {raw_model.num_params():,} parameters, {cfg}")
        log.write(
            f"data: {train_data.size:,} training bytes, {val_data.size:,} validation bytes; "
            f"{bytes_per_step:,} bytes/step on {procs.world} process(es), device {procs.device}"
        )
        log.write(f"optimizer: {args.optimizer}; schedule: {args.schedule}; torch.compile: {why}")

    model.train()
    step, t_run, metrics = start_step, time.time(), Metrics(rows, start_step, bytes_per_step)
    best_val = history.get("val_loss", float("inf"))  # what the checkpoint in --out already holds
    saved_step = start_step
    elapsed = procs.agreed(time.time() - t_start)  # the same on every process
    while not schedule.finished(step, elapsed):
        factor = schedule.factor(step, schedule.progress(step, elapsed))
        loss = train_step(model, optimizer, train_data, step, factor, args, procs)
        step += 1
        if not procs.ddp or step % args.log_every == 0:  # agreeing is an all-reduce: a host sync on a GPU
            elapsed = procs.agreed(time.time() - t_start)
        last = schedule.finished(step, elapsed)
        if procs.master and (step % args.log_every == 0 or last):
            log.update(step, elapsed, metrics.log_step(step, factor * args.lr, loss.item()))
        if step % args.eval_every == 0 or last:
            if procs.master:
                row = evaluation_row(raw_model, step, train_data, val_data, args, procs, log.write)
                metrics.rows.append(row)
                if args.save == "last" or row["val_loss"] < best_val:
                    saver.save(step, row["val_loss"], row["train_loss"], time.time() - t_run, metrics.files())
                    saved_step, best_val = step, min(best_val, row["val_loss"])
            procs.barrier()
    if procs.master:
        log.close()
        if step < schedule.max_steps:
            log.write(f"stopping at step {step}: --max-minutes {args.max_minutes} reached")
        log.write(f"stopped at step {step}; {args.out} holds step {saved_step} (val {best_val:.4f} nats/byte)")
    procs.close()


if __name__ == "__main__":
    main()
