"""The time outside the native step per token at batch 1: `runner.decode` (with the sequence's append) minus the
native call it makes, per token, medians over every token of a few rounds (a median per token keeps a busy
machine's stalls out; a mean would not). Greedy (the decode benchmark's case) and a sampled request with every
filter, penalties and top logprobs.

It times whichever native entry points the checkout has (Step.decode, which samples too, or Step.forward), so the
same file measures an earlier commit: `PYTHONPATH=<that checkout> python step_overhead.py` from a folder that holds
a copy of it.

    python -m bench.step_overhead [--checkpoint checkpoints/shakespeare] [--steps 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from model import checkpoint
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence

REQUESTS = {
    "greedy": (SamplingParams(temperature=0), 0),
    "sampled (top-k, top-p, penalties, 5 top logprobs)": (
        SamplingParams(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1, presence_penalty=0.2),
        5,
    ),
}
PROMPT = b"ROMEO:\nBut soft, what light through yonder window breaks?\n"


class TimedNative:
    """The native Step, each call of its forward and decode timed into `spent` (seconds, since the last reset)."""

    def __init__(self, step):
        self.step, self.spent = step, 0.0

    def __getattr__(self, name):
        attr = getattr(self.step, name)
        if name not in ("forward", "decode"):
            return attr

        def timed(*args):
            t = time.perf_counter()
            out = attr(*args)
            self.spent += time.perf_counter() - t
            return out

        return timed


@torch.inference_mode()
def outside_ms(runner: Runner, params: SamplingParams, top_logprobs: int, steps: int, rounds: int):
    """Medians over tokens (ms): the time outside the native call, and the native call."""
    native = runner.step._step = TimedNative(runner.step._step)
    outside, inside = [], []
    for r in range(rounds):
        seq = Sequence(list(PROMPT), len(PROMPT), params, seed=r, max_length=len(PROMPT) + steps + 1)
        seq.top_logprobs = top_logprobs
        out = runner.prefill(seq, 0, 0, len(PROMPT))
        for _ in range(steps):
            native.spent = 0.0
            t = time.perf_counter()
            seq.append(out.token)
            out = runner.decode([seq])[0]
            total = time.perf_counter() - t
            outside.append(total - native.spent)
            inside.append(native.spent)
    runner.step._step = native.step
    return statistics.median(outside) * 1e3, statistics.median(inside) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare"))
    p.add_argument("--form", default="int8")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)  # the server's step threads on this 2-core machine
    runner = Runner(checkpoint.load_model(args.checkpoint), max_batch=1, form=args.form)
    print(f"step: {runner.step.name}, {args.rounds} rounds of {args.steps} tokens, medians per token")
    print("| request | outside the native call, ms | the native call, ms |\n|---|---|---|")
    for name, (params, top) in REQUESTS.items():
        outside, inside = outside_ms(runner, params, top, args.steps, args.rounds)
        print(f"| {name} | {outside:.4f} | {inside:.4f} |")


if __name__ == "__main__":
    main()
