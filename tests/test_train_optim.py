"""The training script's optimizers and schedule (model/train_optim.py), checked against torch and by their shape."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from model.config import ModelConfig
from model.model import Transformer
from model.train_optim import Muon, Schedule, make_optimizer, make_schedule, newton_schulz


def test_newton_schulz_batched_equals_one_matrix_at_a_time_and_nearly_orthogonalizes():
    g = torch.randn(3, 48, 16, generator=torch.Generator().manual_seed(0))  # tall: iterated on the transpose
    together = newton_schulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
    for i in range(3):
        alone = newton_schulz(g[i : i + 1], (3.4445, -4.775, 2.0315), 5, 1e-7)
        torch.testing.assert_close(together[i], alone[0], rtol=1e-5, atol=1e-6)
    s = torch.linalg.svdvals(together)
    # the quintic iteration aims at U S' Vᵀ with S' roughly in [0.5, 1.5], not exactly UVᵀ (torch's docstring)
    assert s.min() > 0.3 and s.max() < 1.6, s


def test_float32_muon_takes_torchs_muon_step():
    """One step of the float32 subclass against torch.optim.Muon, whose Newton–Schulz runs in bfloat16: the same
    update up to bfloat16's precision; with float32=False it is torch's step exactly."""
    gen = torch.Generator().manual_seed(1)
    weights = [
        torch.randn(32, 16, generator=gen),
        torch.randn(32, 16, generator=gen),
        torch.randn(16, 16, generator=gen),
    ]
    grads = [torch.randn(w.shape, generator=gen) for w in weights]

    def one_step(make):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt = make(params)
        opt.step()
        opt.step()  # a second step uses the momentum buffers
        return params, opt

    ref, ref_opt = one_step(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.1))
    ours, ours_opt = one_step(lambda ps: Muon(ps, lr=0.02, weight_decay=0.1, float32=True))
    same, _ = one_step(lambda ps: Muon(ps, lr=0.02, weight_decay=0.1, float32=False))
    for r, o, s, w in zip(ref, ours, same, weights):
        assert torch.equal(r, s)
        torch.testing.assert_close(o - w, r - w, rtol=0.05, atol=2e-3)  # the updates, not the weights
    for r, o in zip(ref_opt.state.values(), ours_opt.state.values()):
        torch.testing.assert_close(o["momentum_buffer"], r["momentum_buffer"])
    assert ours_opt.state_dict()["param_groups"][0].keys() == ref_opt.state_dict()["param_groups"][0].keys()


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = Transformer(ModelConfig(n_layer=2, n_head=2, d_model=32, mlp_hidden=64, context_length=16))
    args = SimpleNamespace(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    opt = make_optimizer(model, args, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.optimizers["muon"].param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in opt.optimizers["adamw"].param_groups for p in g["params"]]
    assert sorted(muon + adamw) == sorted(names.values()), "every parameter, once"
    assert len(muon) == 2 * 7 and all(n.startswith("layers.") and n.endswith(".weight") for n in muon)
    assert "embed_tokens.weight" in adamw and "lm_head.weight" in adamw
    assert all("norm" in n for n in adamw if n.startswith("layers."))
    opt.set_lr(0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.0005, 0.0005]


def test_optimizer_state_round_trips_and_a_different_optimizer_is_refused():
    model = Transformer(ModelConfig(n_layer=1, n_head=2, d_model=32, mlp_hidden=64, context_length=16))
    args = SimpleNamespace(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    opt = make_optimizer(model, args, torch.device("cpu"))
    model(torch.randint(0, 256, (2, 16)))[0].sum().backward()
    opt.step()
    saved = opt.state_dict()
    again = make_optimizer(model, args, torch.device("cpu"))
    again.load_state_dict(saved)
    assert again.state_dict()["muon"]["state"].keys() == saved["muon"]["state"].keys()
    adamw = make_optimizer(model, SimpleNamespace(**{**vars(args), "optimizer": "adamw"}), torch.device("cpu"))
    with pytest.raises(ValueError, match="trained with muon\\+adamw, this run uses adamw"):
        adamw.load_state_dict(saved)
    bare = adamw.optimizers["adamw"].state_dict()  # what optimizer.pt held before Muon: one AdamW's state
    adamw.load_state_dict(bare)


def schedule(**kw) -> Schedule:
    base = dict(shape="wsd", warmup_steps=10, decay_fraction=0.4, final=0.0, steps=100, seconds=math.inf, max_steps=100)
    return Schedule(**{**base, **kw})


def test_wsd_warms_up_holds_then_decays_to_its_final_rate():
    s = schedule(final=0.1)
    assert s.factor(0, 0.0) == pytest.approx(0.1) and s.factor(9, 0.09) == 1.0
    assert s.factor(30, 0.3) == 1.0 and s.factor(60, 0.6) == 1.0
    assert s.factor(80, 0.8) == pytest.approx(0.55)
    assert s.factor(100, 1.0) == pytest.approx(0.1)
    factors = [s.factor(i, s.progress(i, 0)) for i in range(101)]
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])), "never rises after the warmup"
    cosine = schedule(shape="cosine", final=0.1)
    assert cosine.factor(50, 0.0) == 1.0 and cosine.factor(50, 0.5) == pytest.approx(0.55)
    assert cosine.factor(100, 1.0) == pytest.approx(0.1)


def test_the_schedule_is_laid_over_the_time_budget():
    """With --max-minutes the run's progress is its share of the time: stopped by time, it ends decayed."""
    s = make_schedule(
        SimpleNamespace(
            schedule="wsd", warmup_steps=10, decay_fraction=0.4, min_lr=0.0, lr=1e-3, lr_decay_steps=None,
            max_steps=None, max_minutes=2.0,
        )
    )  # fmt: skip
    assert s.steps == s.max_steps == math.inf and s.seconds == 120
    assert s.progress(5000, 60) == 0.5 and s.factor(5000, s.progress(5000, 60)) == 1.0
    assert s.factor(5000, s.progress(5000, 119.9)) < 0.01
    assert not s.finished(10**9, 119.9) and s.finished(10, 120)
    both = schedule(seconds=100.0)  # steps and time: whichever is further along
    assert both.progress(30, 70) == 0.7 and both.progress(80, 10) == 0.8
    assert both.finished(100, 0) and both.finished(1, 100) and not both.finished(99, 99)
