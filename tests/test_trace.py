"""model/trace.py: the block-by-block run is the model itself, and switching heads off does what it says.

- No head off: bitwise the model's logits (and, with the explicit softmax, bitwise Runner.attention's maps).
- Every head of a layer off: the model with that layer's attention removed, built two other ways (a copy whose
  W_O is zero, and the float64 reference from the saved weights with that block's attention left out).
- "mean": the head writes its mean over the text at every position.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model import checkpoint
from model.runner import Runner
from model.trace import RecentRuns, attention_maps, extend, heads_off_problem, run
from reference import reference
from support import sharp_model

TEXT = "Hé, the cat ☃ sat on the mat!"
IDS = list(TEXT.encode())


@pytest.fixture(scope="module")
def model():
    return sharp_model(seed=3)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "sharp"
    checkpoint.save(path, model, training={"note": "random weights, sharp attention"})
    return path


def logits_of(model, ids, need_weights=False) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]), need_weights=need_weights)[0][0]


def test_no_head_off_is_bitwise_the_model(model):
    """Bitwise because run() is op for op Transformer.forward at the same shape, (1, T, C), on the same weights:
    the same kernels sum in the same order. (Comparisons across shapes, as in the cache tests, take a tolerance.)"""
    plain = logits_of(model, IDS)
    assert torch.equal(run(model, IDS).logits, plain)
    assert torch.equal(run(model, IDS, heads_off=[], ablation="mean").logits, plain)
    # the explicit softmax everywhere: the model's own explicit path, and its maps are Runner.attention's
    every_layer = range(model.config.n_layer)
    assert torch.equal(run(model, IDS, weights_of=every_layer).logits, logits_of(model, IDS, need_weights=True))
    assert torch.equal(attention_maps(model, IDS, []), Runner(model).attention(IDS))


@pytest.mark.parametrize("layer", [0, 1])
def test_every_head_of_a_layer_off_is_the_model_without_that_attention(model, saved, layer):
    cfg = model.config
    all_heads = [(layer, h) for h in range(cfg.n_head)]
    ablated = run(model, IDS, all_heads).logits

    without = copy.deepcopy(model)  # the same model whose layer writes nothing from its attention
    with torch.no_grad():
        without.layers[layer].self_attn.o_proj.weight.zero_()
    # bitwise: zeroed outputs before W_O and a zero W_O both add exact zeros; the rest is the same ops and shapes
    assert torch.equal(ablated, logits_of(without, IDS))

    expected = reference(saved, IDS, attention_removed=[layer]).logits
    assert np.abs(ablated.double().numpy() - expected).max() < 1e-5
    assert np.abs(logits_of(model, IDS).double().numpy() - expected).max() > 0.1, "that attention mattered"


def test_zeroed_heads_match_the_reference_with_those_heads_zeroed(model, saved):
    heads_off = [(0, 1), (1, 0)]
    expected = reference(saved, IDS, heads_off=heads_off)
    trace = run(model, IDS, heads_off)
    assert np.abs(trace.logits.double().numpy() - expected.logits).max() < 1e-5
    assert torch.count_nonzero(trace.z[0][:, 1]) == 0 and torch.count_nonzero(trace.z[1][:, 0]) == 0


def test_mean_ablation_writes_the_head_mean_at_every_position(model):
    plain, trace = run(model, IDS), run(model, IDS, [(1, 1)], "mean")
    z = trace.z[1][:, 1]  # (T, hs)
    assert torch.allclose(z, plain.z[1][:, 1].mean(0).expand_as(z), atol=1e-6)  # layer 1's input is unchanged
    assert torch.equal(trace.z[1][:, 0], plain.z[1][:, 0])  # the other head works as before: the same ops, inputs
    assert not torch.equal(trace.logits, plain.logits)


def test_heads_off_change_nothing_before_their_layer(model):
    plain, trace = run(model, IDS), run(model, IDS, [(1, 0), (1, 1)])
    for i in range(3):  # the embedding, after block 0's attention, after block 0's MLP: the same ops on the same input
        assert torch.equal(trace.residuals[i], plain.residuals[i])
    assert not torch.equal(trace.residuals[3], plain.residuals[3])


def test_bad_heads_are_named(model):
    cfg = model.config
    assert heads_off_problem(cfg, [(0, 1), (1, 0)]) is None
    assert "[2, 0] is not in the model" in heads_off_problem(cfg, [(2, 0)])
    assert "[0, 2] is not in the model" in heads_off_problem(cfg, [(0, 2)])
    assert "named twice" in heads_off_problem(cfg, [(0, 1), (0, 1)])
    with pytest.raises(ValueError, match="named twice"):
        run(model, IDS, [(1, 1), (1, 1)])
    with pytest.raises(ValueError, match="0 bytes"):
        run(model, [])
    with pytest.raises(ValueError, match=r"65 bytes; 1\.\.64"):
        run(model, [97] * 65)


def test_recent_runs_keep_the_last_two(model):
    runs = RecentRuns(model)
    plain = runs(IDS)
    assert runs(IDS, [], "mean") is plain  # no head off: the ablation does not matter
    ablated = runs(IDS, [(1, 1), (0, 1)])
    assert runs(IDS, [(0, 1), (1, 1)]) is ablated  # the order heads are named in does not matter
    assert runs(IDS) is plain
    runs(IDS[:5])  # a third run pushes out the least recently used
    assert runs(IDS) is plain and runs(IDS, [(0, 1), (1, 1)]) is not ablated


def test_a_run_stopped_early_and_extended_is_the_whole_run(model):
    whole = run(model, IDS, [(0, 1), (1, 0)], "mean")
    part = run(model, IDS, [(0, 1), (1, 0)], "mean", blocks=1)
    assert part.blocks == 1 and len(part.residuals) == 3 and part.logits is None
    assert extend(model, part, model.config.n_layer) is part and part.blocks == model.config.n_layer
    # bitwise: extend runs each remaining block as run() does, the same ops at the same shapes
    assert torch.equal(part.logits, whole.logits)
    assert all(torch.equal(a, b) for a, b in zip(part.residuals, whole.residuals, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(part.z, whole.z, strict=True))


def test_recent_runs_extend_a_kept_run(model):
    runs = RecentRuns(model)
    part = runs(IDS, blocks=1)
    assert part.blocks == 1
    assert runs(IDS, blocks=0) is part and part.blocks == 1  # a run that went further serves fewer blocks
    assert runs(IDS) is part and part.blocks == model.config.n_layer
    assert torch.equal(part.logits, logits_of(model, IDS))
