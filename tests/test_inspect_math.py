"""The inspection tools' numbers (model/explain.py, lens.py, attribution.py, ablation.py) against the float64
reference rebuilt from the saved weights (tests/reference.py) and against the model's own outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import TinyLLM, checkpoint
from model.ablation import ablation_loss
from model.attribution import attribute, split_logits
from model.explain import blocks_needed, explain
from model.lens import logit_lens, stage_names
from model.trace import run
from reference import reference
from support import float32_bound, sharp_model

TEXT = "ROMEO: But, soft! é☃ what light?"
IDS = list(TEXT.encode())
T = len(IDS)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "sharp"
    checkpoint.save(path, sharp_model(seed=5), training={"note": "random weights, sharp attention"})
    return path


@pytest.fixture(scope="module")
def llm(saved):
    return TinyLLM.load(saved, device="cpu")


def close(served: torch.Tensor, expected: np.ndarray, tol: float = 1e-5) -> None:
    diff = np.abs(served.double().numpy() - expected).max()
    assert diff < tol, f"max abs difference {diff:.2e}"


# ------------------------------------------------------------------ one head, step by step


@pytest.mark.parametrize(("layer", "head", "query"), [(0, 1, T - 1), (1, 0, 9), (1, 1, 0)])
def test_walkthrough_matches_the_reference(llm, saved, layer, head, query):
    ref = reference(saved, IDS)
    w = llm.explain(TEXT, layer, head, query)
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    assert np.abs(ref.probs[layer][head] - uniform).max() > 0.1, "maps this flat would not show a wrong RoPE or scale"
    close(w.q_before_rope, ref.q_before_rope[layer][head, query])
    close(w.q, ref.q[layer][head, query])
    close(w.keys, ref.k[layer][head])
    close(w.values, ref.v[layer][head])
    close(w.raw_scores, ref.k[layer][head] @ ref.q[layer][head, query])
    close(w.weights, ref.probs[layer][head, query])
    close(w.z, ref.z[layer][head, query])
    close(w.write, ref.head_writes[layer][head, query])
    close(w.block_input, ref.residuals[2 * layer][query])


def test_the_steps_follow_from_each_other(llm):
    query = 20
    w = llm.explain(TEXT, 1, 1, query)
    assert torch.allclose(w.scaled_scores * w.sqrt_d_k, w.raw_scores, rtol=1e-6, atol=1e-6)
    assert w.mask.tolist() == [j <= query for j in range(T)]
    masked = w.scaled_scores.masked_fill(~w.mask, float("-inf"))
    assert torch.allclose(torch.softmax(masked, -1), w.weights, atol=1e-7)
    assert torch.count_nonzero(w.weights[query + 1 :]) == 0 and abs(float(w.weights.sum()) - 1) < 1e-6
    assert torch.allclose(w.weights[: query + 1] @ w.values[: query + 1], w.z, atol=1e-6)
    assert torch.allclose(llm.attention(TEXT)[1, 1, query], w.weights, atol=1e-6)  # /v1/attention's row
    assert w.weights_vs_attention < 1e-6 and w.z_vs_run < 1e-5 and w.writes_plus_input_vs_residual < 1e-5
    assert not w.switched_off


def test_walkthrough_of_an_ablated_run(llm, saved):
    """Layer 1's input comes from a layer 0 whose head 0 is off; the explained head itself can be off too."""
    ref = reference(saved, IDS, heads_off=[(0, 0)])
    w = llm.explain(TEXT, 1, 0, T - 1, heads_off=[(0, 0), (1, 0)])
    close(w.weights, ref.probs[1][0, T - 1])
    assert w.switched_off and w.z_vs_run is None
    assert w.writes_plus_input_vs_residual < 1e-5  # head 0 writes nothing in the run
    with pytest.raises(ValueError, match=rf"query {T} out of range: valid indices are 0\.\.{T - 1}"):
        llm.explain(TEXT, 0, 0, T)


@pytest.mark.parametrize(("heads_off", "ablation"), [([], "zero"), ([(0, 1), (1, 0)], "zero"), ([(1, 1)], "mean")])
def test_a_run_that_stops_before_the_layer_explains_it_as_the_whole_run_does(llm, heads_off, ablation):
    """A new text runs only the blocks before the explained layer; the layer's own outputs at the query are then
    computed as the run computes them, so the walkthrough and its checks are the whole run's."""
    cfg = llm.model.config
    whole = run(llm.model, IDS, heads_off, ablation)
    part = run(llm.model, IDS, heads_off, ablation, blocks=blocks_needed(cfg, 1, heads_off, ablation))
    assert part.blocks == (2 if ablation == "mean" else 1)
    for head in range(cfg.n_head):
        a, b = explain(llm.model, whole, 1, head, 20), explain(llm.model, part, 1, head, 20)
        for step in ("q", "keys", "raw_scores", "weights", "values", "z", "write"):
            # bitwise: both runs reach the layer through the same ops at the same shapes, and these steps are the
            # same code on the same block input
            assert torch.equal(getattr(a, step), getattr(b, step)), step
        assert b.weights_vs_attention < 1e-6 and b.writes_plus_input_vs_residual < 1e-5
        assert b.switched_off == ((1, head) in heads_off)
        if not b.switched_off:
            assert b.z_vs_run < 1e-5 and math.isclose(a.z_vs_run, b.z_vs_run, abs_tol=1e-6)
    with pytest.raises(ValueError, match="has run 0 blocks; explaining layer 1 needs more"):
        explain(llm.model, run(llm.model, IDS, blocks=0), 1, 0, 20)


# ------------------------------------------------------------------ the logit lens


def test_lens_last_stage_is_the_model_and_the_first_reads_the_embedding(llm, saved):
    lens = llm.logit_lens(TEXT, top_k=4)
    assert lens.stages == stage_names(2) == ["embedding", "0.attention", "0.mlp", "1.attention", "1.mlp"]
    with torch.inference_mode():
        logits = llm.model(torch.tensor([IDS]))[0][0]
    assert torch.allclose(lens.logprobs[-1], F.log_softmax(logits, -1), atol=1e-5)
    ref = reference(saved, IDS)
    readout = ref.residuals[0] / np.sqrt((ref.residuals[0] ** 2).mean(-1, keepdims=True) + 1e-5) @ ref.readout.T
    readout -= np.log(np.exp(readout).sum(-1, keepdims=True))
    close(lens.logprobs[0], readout)


def test_lens_ranks_and_bits_agree_with_the_distributions(llm):
    lens = llm.logit_lens(TEXT, top_k=3)
    S = len(lens.stages)
    assert lens.top_ids.shape == (S, T, 3) and lens.next_rank.shape == (S, T - 1)
    assert (lens.top_probs[..., :-1] >= lens.top_probs[..., 1:]).all()
    following = torch.tensor(IDS[1:])
    for s in range(S):
        logprobs = lens.logprobs[s, :-1]
        chosen = logprobs[torch.arange(T - 1), following]
        assert torch.allclose(lens.next_prob[s], chosen.exp())
        # The rank counts the bytes more likely than the next one, their log-probabilities compared as stored
        # (exact). Not their exponentials: lens.next_prob and logprobs.exp() run exp over tensors of other shapes,
        # where torch may take its vectorised loop for one and its scalar tail for the other, and the next byte's
        # probability, computed twice, may then differ in its last bit and count itself.
        assert torch.equal(lens.next_rank[s], (logprobs > chosen[:, None]).sum(-1) + 1)
        assert math.isclose(lens.bits_per_byte[s], float(-chosen.exp().log2().mean()), rel_tol=1e-5)
        top1 = lens.next_rank[s] == 1
        assert torch.equal(top1, lens.top_ids[s, :-1, 0] == following)


# ------------------------------------------------------------------ direct logit attribution


@pytest.mark.parametrize(("position", "target"), [(5, None), (T - 1, ord("!")), (0, 0xE2)])
def test_pushes_sum_to_the_logit_and_match_the_reference(llm, saved, position, target):
    a = llm.attribute(TEXT, position, target)
    ref = reference(saved, IDS)
    assert a.target == (IDS[position + 1] if target is None else target)
    assert abs(a.error) < 1e-4 and abs(a.logit - (a.embedding + float(a.heads.sum()) + float(a.mlps.sum()))) < 1e-4
    assert abs(a.logit - ref.logits[position, a.target]) < 1e-5
    reads = ref.readout[a.target] * ref.norm_scale[position]  # (C,)
    close(torch.tensor(a.embedding), ref.residuals[0][position] @ reads)
    close(a.heads, np.stack([writes[:, position] @ reads for writes in ref.head_writes]))
    close(a.mlps, np.array([mlp[position] @ reads for mlp in ref.mlp]))
    top = a.top(3)
    assert [abs(c.logit) for c in top] == sorted((abs(c.logit) for c in a.contributions()), reverse=True)[:3]


@torch.inference_mode()
def attribution_bounds(model, trace, position: int, target: int) -> dict[str, torch.Tensor]:
    """How far apart two computations of position's split (split_logits) may land when torch sums in other orders:
    support.float32_bound of each number's own terms. Every number is a float32 sum of products times the final
    norm's scale s, itself a chain of C + 3 roundings (a mean of C squares, + ε, 1/√); the reads W_U[target] ⊙ w
    are one rounding."""
    cfg = model.config
    C, hs, s_depth = cfg.d_model, cfg.head_dim, cfg.d_model + 3
    final = trace.residuals[-1][position].double()  # (C,)
    s = 1 / torch.sqrt(final.pow(2).mean() + model.norm.eps)
    reads = model.lm_head.weight[target].double() * model.norm.weight.double() * s  # (C,): the terms' common factor
    push_depth = 1 + C + 1 + s_depth  # reads, the sum of C products, × s
    w_o = [block.self_attn.o_proj.weight.double().view(C, cfg.n_head, hs) for block in model.layers]  # (C, nh, hs)
    head_terms = [  # (nh, C, hs): z_d · reads_c · W_O[c, head, d], summed over c (einsum) and then over d
        trace.z[layer][position].double()[:, None, :] * (reads[:, None, None] * w_o[layer]).transpose(0, 1)
        for layer in range(cfg.n_layer)
    ]
    return {
        "logit": float32_bound(final * reads, depth=2 + C + s_depth),  # x·s, ·w, then lm_head's sum of C
        "embedding": float32_bound(trace.residuals[0][position].double() * reads, push_depth),
        "mlps": torch.stack([float32_bound(out[position].double() * reads, push_depth) for out in trace.mlp]),
        "heads": torch.stack([float32_bound(t, push_depth + hs, dim=(-2, -1)) for t in head_terms]),  # (n_layer, nh)
    }


def test_attribution_of_many_positions_in_one_run_and_of_switched_off_heads(llm):
    """Attributing T - 1 positions in one call and one position alone split the same rows of one run, but through
    matrix products of other shapes ((T - 1, C) against (1, C)), whose summation order torch's CPU kernels choose
    by shape: on an AVX-512 Xeon the logit came out one float32 ulp apart. So split_logits promises agreement
    within float32 rounding, not the same bits, and each number is compared within the bound of its own terms."""
    trace = run(llm.model, IDS, heads_off=[(1, 1)])
    many = attribute(llm.model, trace, positions=list(range(T - 1)))
    assert all(abs(a.error) < 1e-4 for a in many)
    assert all(a.heads[1, 1] == 0 for a in many)  # a zeroed head pushes nothing: each of its products is 0 exactly
    for p in (0, 7, T - 2):
        one = attribute(llm.model, trace, [p])[0]
        bound = attribution_bounds(llm.model, trace, p, one.target)
        assert (many[p].position, many[p].target) == (one.position, one.target)
        for name in ("logit", "embedding", "mlps", "heads"):
            diff = (torch.as_tensor(getattr(many[p], name)).double() - torch.as_tensor(getattr(one, name))).abs()
            assert (diff <= bound[name]).all(), f"position {p} {name}: {diff} > bound {bound[name]}"
        neighbour = many[p + 1 if p < T - 2 else p - 1]
        assert abs(neighbour.logit - one.logit) > bound["logit"], "the bound is tight enough to tell positions apart"
    with pytest.raises(ValueError, match="name a target"):
        attribute(llm.model, trace, [T - 1])


def test_split_logits_of_rows_from_a_shorter_pass(llm):
    """What a decode step would keep at its one new position gives the pushes attribute finds in a whole run."""
    k = 20  # the byte at k + 1 was "generated" after the bytes 0..k
    whole = attribute(llm.model, run(llm.model, IDS), [k])[0]
    prefix = run(llm.model, IDS[: k + 1])  # a pass that ends at position k, as generation's step does
    (step,) = split_logits(
        llm.model,
        positions=[k],
        targets=[IDS[k + 1]],
        embedding=prefix.residuals[0][-1:],
        z=[z[-1:] for z in prefix.z],
        mlp=[out[-1:] for out in prefix.mlp],
        final=prefix.residuals[-1][-1:],
    )
    assert abs(step.logit - whole.logit) < 1e-5 and abs(step.error) < 1e-4
    assert torch.allclose(step.heads, whole.heads, atol=1e-5) and torch.allclose(step.mlps, whole.mlps, atol=1e-5)


# ------------------------------------------------------------------ ablation


def test_no_head_off_loses_nothing_bitwise(llm):
    out = llm.ablate(TEXT, heads_off=[])
    # bitwise: with no head off both losses read the one kept run (the same trace), through the same ops
    assert torch.equal(out.bits, out.bits_ablated) and out.change == 0
    with torch.inference_mode():
        logits = llm.model(torch.tensor([IDS]))[0][0]
    expected = F.cross_entropy(logits[:-1], torch.tensor(IDS[1:]), reduction="none") / math.log(2)
    assert torch.allclose(out.bits, expected, atol=1e-6)


def test_switching_heads_off_changes_the_loss_by_what_the_ablated_run_predicts(llm, saved):
    heads_off = [(0, 0), (0, 1)]
    out = llm.ablate(TEXT, heads_off)
    ref = reference(saved, IDS, attention_removed=[0]).logits
    ref_bits = -(ref[:-1] - np.log(np.exp(ref[:-1]).sum(-1, keepdims=True)))[np.arange(T - 1), IDS[1:]] / math.log(2)
    close(out.bits_ablated, ref_bits)
    assert math.isclose(out.change, float(out.bits_ablated.mean() - out.bits.mean()), abs_tol=1e-9)
    assert out.change != 0
    with pytest.raises(ValueError, match="at least 2"):
        ablation_loss(run(llm.model, IDS[:1]), run(llm.model, IDS[:1], heads_off))


def test_explain_reads_the_kept_run(llm):
    """The same text again costs no forward pass: the walkthrough comes from the kept trace. A new text runs only
    the blocks before the explained layer; what reads more (the lens) runs the rest of the same trace."""
    text = TEXT + " Arise!"  # new to the fixture's kept runs
    llm.explain(text, 1, 0, 3)
    first = llm.trace(text, blocks=1)
    assert first.blocks == 1 and first.logits is None
    llm.explain(text, 0, 1, 5)
    assert llm.trace(text, blocks=0) is first and first.blocks == 1
    assert llm.logit_lens(text).stages and first.blocks == llm.model.config.n_layer
    assert llm.trace(text) is first and llm.trace(text.encode()) is first
    assert logit_lens(llm.model, first).logprobs.shape == (5, len(text.encode()), 256)
