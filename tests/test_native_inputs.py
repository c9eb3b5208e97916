"""The native step's constructor and forward check every shape and range they rely on: each bad input gets a
Python exception, never a signal (the calls run in a subprocess, where a crash cannot take pytest down). And the
kernels' contract on the inputs no checkpoint should hold: an int8 weight of -128, NaN and infinite activations
(model/native/kernels.h)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from model.native import step as native
from model.quantize import quantize_groups
from server.process import ROOT
from support import tiny_model

pytestmark = pytest.mark.native  # fails instead of skipping under TINYLLM_REQUIRE_NATIVE=1 (conftest.py)


def step_args(form: str = "float32") -> dict:
    """The native constructor's arguments for the tiny model (2 layers, 2 heads, d 32, mlp 64, vocab 256), as
    NativeStep builds them."""
    model = tiny_model(seed=0)
    cfg = model.config
    group, weights, scales, norms = native.packed(model, form)
    return dict(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        d_model=cfg.d_model,
        mlp_hidden=cfg.mlp_hidden,
        norm_eps=cfg.norm_eps,
        form=form,
        group=group,
        kernels="auto",
        embed=model.embed_tokens.weight.detach().float().contiguous(),
        rope_cos=model.rope_cos.contiguous(),
        rope_sin=model.rope_sin.contiguous(),
        norms=norms,
        weights=weights,
        scales=scales,
    )


def make(args: dict):
    return native._step.Step(*args.values())


def replaced(form: str = "float32", **changes) -> dict:
    return {**step_args(form), **changes}


def with_item(name: str, index: int, value, form: str = "float32") -> dict:
    args = step_args(form)
    items = list(args[name])
    items[index] = value
    return {**args, name: items}


D, H, V = 32, 64, 256  # d_model, mlp_hidden, vocab of the tiny model

CONSTRUCTOR = {  # name: the arguments, one of them bad
    "n_head 0": lambda: replaced(n_head=0),
    "n_head negative": lambda: replaced(n_head=-2),
    "n_head not dividing d_model": lambda: replaced(n_head=3),
    "odd head_dim": lambda: replaced(n_head=32),
    "head_dim over 512": lambda: replaced(d_model=1040, n_head=1),
    "n_layer 0": lambda: {
        **replaced(n_layer=0),
        "norms": step_args()["norms"][-1:],
        "weights": step_args()["weights"][-1:],
    },
    "mlp_hidden 0": lambda: replaced(mlp_hidden=0),
    "norm_eps nan": lambda: replaced(norm_eps=float("nan")),
    "unknown form": lambda: replaced(form="int4"),
    "unknown kernels": lambda: replaced(kernels="neon"),
    "embedding too wide": lambda: replaced(embed=torch.zeros(V, D + 8)),
    "embedding 1-D": lambda: replaced(embed=torch.zeros(V * D)),
    "embedding float64": lambda: replaced(embed=torch.zeros(V, D, dtype=torch.float64)),
    "rope table too wide": lambda: replaced(rope_cos=torch.zeros(64, 18), rope_sin=torch.zeros(64, 18)),
    "rope sin unlike cos": lambda: replaced(rope_sin=torch.zeros(32, 16)),
    "norm too long": lambda: with_item("norms", 0, torch.ones(D + 1)),
    "norm 2-D": lambda: with_item("norms", 4, torch.ones(1, D)),
    "too few norms": lambda: {**step_args(), "norms": step_args()["norms"][:-1]},
    "too few matrices": lambda: {**step_args(), "weights": step_args()["weights"][:-1]},
    "qkv too wide": lambda: with_item("weights", 0, torch.zeros(3 * D, D + 32)),
    "qkv too tall": lambda: with_item("weights", 0, torch.zeros(3 * D + 4, D)),
    "o_proj not square": lambda: with_item("weights", 1, torch.zeros(D, D + 32)),
    "gate/up too wide": lambda: with_item("weights", 2, torch.zeros(2 * H, D + 32)),
    "down too wide": lambda: with_item("weights", 3, torch.zeros(D, H + 32)),
    "lm_head rows unlike the vocabulary": lambda: with_item("weights", 8, torch.zeros(V + 1, D)),
    "matrix float64": lambda: with_item("weights", 1, torch.zeros(D, D, dtype=torch.float64)),
    "matrix not contiguous": lambda: with_item("weights", 1, torch.zeros(D, D).t()),
    "int8 group 48": lambda: replaced("int8", group=48),
    "int8 group 16": lambda: replaced("int8", group=16),
    "int8 scales missing": lambda: {**step_args("int8"), "scales": step_args("int8")["scales"][:-1]},
    "int8 scales too wide": lambda: with_item("scales", 0, torch.ones(3 * D, 2), "int8"),
    "int8 matrix too wide": lambda: with_item("weights", 0, torch.zeros(3 * D, D + 32, dtype=torch.int8), "int8"),
    "int8 form, float matrix": lambda: with_item("weights", 1, torch.zeros(D, D), "int8"),
}


def forward_call(changes: dict) -> None:
    """A valid decode call of 2 entries (rows 0 and 1, positions 3 and 5) on a cache of 2 rows x 8 positions,
    with `changes` to its arguments."""
    step = make(step_args())
    k = [torch.zeros(2, 2, 8, 16) for _ in range(2)]
    v = [torch.zeros(2, 2, 8, 16) for _ in range(2)]
    call = dict(
        tokens=torch.tensor([1, 2]),
        rows=torch.tensor([0, 1]),
        positions=torch.tensor([3, 5]),
        k_cache=k,
        v_cache=v,
        logits_for=torch.tensor([0, 1]),
        logits_out=torch.empty(2, V),
        attention_for=torch.tensor([1]),
        attention_out=torch.empty(1, 2, 2, 8),
    )
    step.forward(*{**call, **changes}.values())


FORWARD = {
    "valid call": lambda: forward_call({}),  # the control: it must run
    "attention_for repeated": lambda: forward_call(
        {"attention_for": torch.tensor([1, 1]), "attention_out": torch.empty(2, 2, 2, 8)}
    ),
    "logits_for repeated": lambda: forward_call({"logits_for": torch.tensor([0, 0])}),
    "logits_for out of range": lambda: forward_call({"logits_for": torch.tensor([0, 2])}),
    "attention_for out of range": lambda: forward_call({"attention_for": torch.tensor([-1])}),
    "token out of range": lambda: forward_call({"tokens": torch.tensor([1, 256])}),
    "position past the cache": lambda: forward_call({"positions": torch.tensor([3, 8])}),
    "row past the cache": lambda: forward_call({"rows": torch.tensor([0, 2])}),
    "lengths differ": lambda: forward_call({"rows": torch.tensor([0])}),
    "cache of 3 dimensions": lambda: forward_call({"k_cache": [torch.zeros(2, 2, 8)] * 2}),
    "cache head_dim wrong": lambda: forward_call({"k_cache": [torch.zeros(2, 2, 8, 8)] * 2}),
    "v cache unlike k": lambda: forward_call({"v_cache": [torch.zeros(2, 2, 4, 16)] * 2}),
    "one cache for two layers": lambda: forward_call({"k_cache": [torch.zeros(2, 2, 8, 16)]}),
    "cache float64": lambda: forward_call({"v_cache": [torch.zeros(2, 2, 8, 16, dtype=torch.float64)] * 2}),
    "logits_out too narrow": lambda: forward_call({"logits_out": torch.empty(2, V - 1)}),
    "attention_out too few keys": lambda: forward_call({"attention_out": torch.empty(1, 2, 2, 5)}),
    "tokens int32": lambda: forward_call({"tokens": torch.tensor([1, 2], dtype=torch.int32)}),
}
CASES = {**CONSTRUCTOR, **FORWARD}


def run_cases(start: int = 0) -> None:
    """In the subprocess: each case from the start-th on, in turn, one JSON line each (the case's name first, so a
    crash names it)."""
    for name, case in list(CASES.items())[start:]:
        print(json.dumps({"case": name}), flush=True)
        try:
            make(case()) if name in CONSTRUCTOR else case()
            outcome = {"raised": None}
        except Exception as e:
            outcome = {"raised": type(e).__name__, "message": str(e).splitlines()[0]}
        print(json.dumps({"case": name, **outcome}), flush=True)


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """Every case's outcome: run_cases in a subprocess, started again after the case that killed it, if any."""
    done, names = {}, list(CASES)
    while len(done) < len(names):
        start = len(done)
        proc = subprocess.run(
            [sys.executable, "-c", f"import test_native_inputs as t; t.run_cases({start})"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        done |= {line["case"]: line for line in lines if len(line) > 1}
        if len(done) < len(names):  # the next case killed the process
            assert proc.returncode != 0 and lines and lines[-1] == {"case": names[len(done)]}, proc.stderr[-2000:]
            done[names[len(done)]] = {"case": names[len(done)], "died": proc.returncode}
    return done


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_input_raises_a_python_exception_never_a_signal(outcomes, name):
    outcome = outcomes[name]
    assert "died" not in outcome, f"{name}: the process died (exit {outcome['died']})"
    if name == "valid call":
        assert outcome["raised"] is None, outcome
    else:
        assert outcome["raised"] in ("RuntimeError", "ValueError", "IndexError", "TypeError"), outcome


# ------------------------------------------------------------------ the kernels' contract on odd inputs


def int8_logits(args: dict, kernels: str) -> torch.Tensor:
    """The int8 step's logits for a few entries at positions 0..5 of one row."""
    step = make({**args, "kernels": kernels})
    k = [torch.zeros(1, 2, 8, 16) for _ in range(2)]
    v = [torch.zeros(1, 2, 8, 16) for _ in range(2)]
    logits = torch.empty(6, V)
    tokens = torch.tensor([5, 100, 7, 250, 66, 1])
    step.forward(tokens, torch.zeros(6, dtype=torch.long), torch.arange(6), k, v, torch.arange(6), logits, *_NO_ATTN)
    return logits


_NO_ATTN = (torch.empty(0, dtype=torch.long), torch.empty(0, 0, 0, 0))


def test_an_int8_weight_of_minus_128_reads_as_minus_127_on_every_path():
    """AVX2 multiplies |x| by w with x's sign (vpsignb), which cannot negate -128: the step clamps at -127 when
    it packs the weights, so every path computes the same, and the same as a -127."""
    args = step_args("int8")
    low, clamped = [w.clone() for w in args["weights"]], [w.clone() for w in args["weights"]]
    for i in (0, 3, 8):  # a Q/K/V, a down projection and the unembedding: rows of -128 against both signs of x
        low[i][:5] = -128
        clamped[i][:5] = -127
    reference = int8_logits({**args, "weights": clamped}, "scalar")
    for kernels in native.kernels_here():
        assert torch.equal(int8_logits({**args, "weights": low}, kernels), reference), kernels
    assert not torch.equal(reference, int8_logits(args, "scalar")), "the rows of -127 change the logits"


GROUPS = {  # name: one group of 64 activations
    "plain": torch.linspace(-3, 5, 64),
    "a NaN": torch.linspace(-3, 5, 64).index_fill(0, torch.tensor([9]), float("nan")),
    "a NaN last": torch.linspace(-3, 5, 64).index_fill(0, torch.tensor([63]), float("nan")),
    "all NaN": torch.full((64,), float("nan")),
    "an infinity": torch.linspace(-3, 5, 64).index_fill(0, torch.tensor([20]), float("inf")),
    "a NaN and an infinity": torch.linspace(-3, 5, 64)
    .index_fill(0, torch.tensor([2, 40]), float("nan"))
    .index_fill(0, torch.tensor([41]), -float("inf")),
    "zeros": torch.zeros(64),
}


@pytest.mark.parametrize("name", list(GROUPS))
def test_activations_quantize_alike_on_every_path_nan_and_infinity_included(name):
    """The contract's rule: a NaN makes the group's scale NaN; a value whose x / scale is NaN quantizes to 0."""
    x = GROUPS[name]
    q, scale = native._step.quantize_group(x, "scalar")
    for kernels in native.kernels_here():
        q_path, scale_path = native._step.quantize_group(x, kernels)
        assert torch.equal(q_path, q) and (scale_path == scale or math.isnan(scale_path) and math.isnan(scale)), kernels
    if torch.isnan(x).any():
        assert math.isnan(scale) and not q.any(), "a NaN: scale NaN, every value 0"
    elif torch.isinf(x).any():
        assert scale == float("inf") and not q.any(), "an infinity: scale inf, every value 0"
    else:
        expected, expected_scale = quantize_groups(x, 64)
        assert torch.equal(q.float(), expected.flatten()) and scale == pytest.approx(float(expected_scale))


def test_a_nan_or_infinite_activation_makes_its_entrys_logits_nan_on_every_path_and_no_one_elses():
    """An infinite embedding row (as a broken checkpoint might hold) through the int8 step: its entry's logits are
    NaN on every path; the other entries' logits are those of a step without it."""
    args = step_args("int8")
    broken = args["embed"].clone()
    broken[100, 3] = float("inf")
    for kernels in native.kernels_here():
        logits = int8_logits({**args, "embed": broken}, kernels)
        assert torch.isnan(logits[1]).all(), kernels  # entry 1 is token 100; entries after it attend to it
        assert torch.equal(logits[0], int8_logits(args, kernels)[0]), kernels
