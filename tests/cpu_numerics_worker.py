"""Run by tests/test_cpu_numerics.py in a subprocess (under one ATEN_CPU_CAPABILITY): the same requests on every
native kernel path this CPU runs, in both weight forms; prints what torch says it dispatches to and, per form
and kernel path, every chosen token with its logprob, its top logprobs and a hash of its whole logprobs row, as
JSON (floats as hex: bitwise).

    python tests/cpu_numerics_worker.py CHECKPOINT
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch

from model import checkpoint
from model.native import step as native
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence

PROMPTS = [b"ROMEO:\nBut soft, ", b"JULIET:\nO Romeo, Romeo", b"First Citizen:\n", b"KING HENRY:\nOnce more"]
REQUESTS = [  # (params, seed, top_logprobs): greedy and seeded draws through every filter and penalty
    (SamplingParams(temperature=0), 0, 5),
    (SamplingParams(temperature=0.9, top_k=20), 1, 3),
    (
        SamplingParams(temperature=1.3, top_p=0.8, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3),
        2,
        0,
    ),
    (SamplingParams(temperature=0.7, top_k=40, top_p=0.95, valid_utf8=False), 3, 4),
]
STEPS = 24


def run(runner: Runner) -> list[list]:
    """The four requests prefilled into rows 0..3, then decoded together: each token as [token, logprob,
    top logprobs, sha256 of its logprobs row]."""
    seqs = [
        Sequence(list(prompt), len(prompt), params, seed, top_logprobs=top, max_length=len(prompt) + STEPS)
        for prompt, (params, seed, top) in zip(PROMPTS, REQUESTS)
    ]
    outs = [runner.prefill(seq, row, 0, len(seq.tokens)) for row, seq in enumerate(seqs)]
    record: list[list] = [[] for _ in seqs]
    for _ in range(STEPS):
        for seq, out, rec in zip(seqs, outs, record):
            rec.append(
                [
                    out.token,
                    float(out.logprob).hex(),
                    [[t, float(v).hex()] for t, v in out.top_logprobs],
                    hashlib.sha256(out.logprobs.numpy().tobytes()).hexdigest()[:16],
                ]
            )
            seq.append(out.token)
        outs = runner.decode(seqs)
    return record


def main(path: str) -> None:
    model = checkpoint.load_model(path)
    results = {
        f"{form}/{kernels}": run(Runner(model, max_batch=len(REQUESTS), form=form, kernels=kernels))
        for form in native.FORMS
        for kernels in native.kernels_here()
    }
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "results": results}))


if __name__ == "__main__":
    main(sys.argv[1])
