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
from tqdm import tqdm

from model import checkpoint
from model.config import ModelConfig
from model.model import Transformer
from model.train_checkpoint import TrainingCheckpoint, choose_config, resume_training
from model.train_data import load_data
from model.train_eval import Metrics, evaluation_row
from model.train_setup import TrainError, config_from_flags, start_processes
from model.train_step import lr_at, make_optimizer, train_step


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


def main(argv=None) -> None:
    try:
        train(parse_args(argv))
    except (TrainError, checkpoint.CheckpointError) as e:
        sys.exit(f"tinyllm-train: error: {e}")


def train(args) -> None:
    t_start = time.time()
    procs = start_processes(args)
    args.min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    cfg, resumed = choose_config(args, config_from_flags(args))  # a resumed run takes the checkpoint's config
    train_data, val_data, data_record = load_data(args)
    torch.manual_seed(args.seed)  # the same initial weights on every process
    raw_model = Transformer(cfg)
    if resumed:
        raw_model.load_state_dict(checkpoint.load_state_dict(resumed, cfg), strict=not cfg.tie_embeddings)
    raw_model.to(procs.device)
    optimizer = make_optimizer(raw_model, args.weight_decay, args.lr, procs.device)
    start_step, history, rows = resume_training(resumed, optimizer, procs.device)
    model = procs.wrap(raw_model, args.compile)

    bytes_per_step = args.batch_size * args.context_length * args.grad_accum * procs.world
    saver = TrainingCheckpoint(
        args, raw_model, optimizer, procs, data_record=data_record, bytes_per_step=bytes_per_step, history=history
    )
    if procs.master:
        tqdm.write(f"model: {raw_model.num_params():,} parameters, {cfg}")
        tqdm.write(
            f"data: {train_data.size:,} training bytes, {val_data.size:,} validation bytes; "
            f"{bytes_per_step:,} bytes/step on {procs.world} process(es), device {procs.device}"
        )

    model.train()
    bar = tqdm(total=args.max_steps, initial=start_step, disable=not procs.master, unit="step", dynamic_ncols=True)
    step, t_run, metrics = start_step, time.time(), Metrics(rows, start_step, bytes_per_step)
    best_val = history.get("val_loss", float("inf"))  # what the checkpoint in --out already holds
    saved_step = start_step
    while step < args.max_steps:
        lr = lr_at(step, args)
        loss = train_step(model, optimizer, train_data, step, lr, args, procs)
        step += 1
        bar.update(1)
        out_of_time = procs.any(args.max_minutes is not None and (time.time() - t_start) / 60 >= args.max_minutes)
        last = step == args.max_steps or out_of_time
        if procs.master and (step % args.log_every == 0 or last):
            bar.set_postfix(**metrics.log_step(step, lr, loss.item()))
        if step % args.eval_every == 0 or last:
            if procs.master:
                row = evaluation_row(raw_model, step, train_data, val_data, args, procs)
                metrics.rows.append(row)
                if args.save == "last" or row["val_loss"] < best_val:
                    saver.save(step, row["val_loss"], row["train_loss"], time.time() - t_run, metrics.files())
                    saved_step, best_val = step, min(best_val, row["val_loss"])
            procs.barrier()
        if out_of_time:
            if procs.master:
                tqdm.write(f"stopping at step {step}: --max-minutes {args.max_minutes} reached")
            break
    bar.close()
    if procs.master:
        tqdm.write(f"stopped at step {step}; {args.out} holds step {saved_step} (val {best_val:.4f} nats/byte)")
    procs.close()


if __name__ == "__main__":
    main()
