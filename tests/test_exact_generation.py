"""Generation in the exact model, heads switched off and each byte explained (model.trace.cached_step,
Runner.prefill_exact/decode_exact, model.generate with heads_off or explain).

- The cached step, chunk by chunk, equals the whole-text run (model.trace.run) with the same heads off.
- Every head of a layer off, greedy, equals greedy generation by a copy of the model whose W_O of that layer is zero,
  run over the whole text at every step (no cache).
- No head off and no explain is the plain generation, bitwise; an exact sequence writes only its own cache row.
- Each byte's pushes sum to its logit and equal model.attribution's on a run over the final text.
"""

from __future__ import annotations

import copy

import pytest
import torch

from model.attribution import attribute
from model.generate import generate
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence
from model.trace import cached_step, run
from support import random_ids, sharp_model

GREEDY = SamplingParams(temperature=0, valid_utf8=False)


@pytest.fixture(scope="module")
def model():
    return sharp_model(seed=5)


def greedy_without_cache(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("heads_off", [[], [(0, 1)], [(1, 0), (0, 0)]])
def test_cached_step_chunk_by_chunk_equals_the_whole_text_run(model, heads_off):
    ids = random_ids(1, 40, seed=1)[0].tolist()
    runner = Runner(model, max_batch=2, exact_rows=2)
    row = runner.exact_row(1)
    bounds = [(0, 13), (13, 30), *[(t, t + 1) for t in range(30, 40)]]
    for start, end in bounds:
        step = cached_step(model, ids[start:end], start, runner.cache, row, heads_off, need_weights=end > 35)
        whole = run(model, ids[:end], heads_off, weights_of=range(model.config.n_layer))
        torch.testing.assert_close(step.logits, whole.logits[-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(step.final, whole.residuals[-1][-1], rtol=1e-5, atol=1e-5)
        if end > 35:
            probs = torch.stack([whole.probs[i][:, -1] for i in range(model.config.n_layer)])  # (n_layer, nh, end)
            torch.testing.assert_close(step.attention, probs, rtol=1e-5, atol=1e-6)
        for layer, head in heads_off:
            assert torch.count_nonzero(step.z[layer][head]) == 0


@pytest.mark.parametrize("layer", [0, 1])
def test_every_head_of_a_layer_off_is_greedy_generation_without_that_attention(model, layer):
    prompt = random_ids(1, 9, seed=layer)[0].tolist()
    all_heads = [(layer, h) for h in range(model.config.n_head)]
    steps = list(generate(Runner(model, exact_rows=1), prompt, 30, GREEDY, seed=0, heads_off=all_heads))
    without = copy.deepcopy(model)
    with torch.no_grad():
        without.layers[layer].self_attn.o_proj.weight.zero_()
    assert [s.token for s in steps] == greedy_without_cache(without, prompt, 30)
    assert [s.token for s in steps] != greedy_without_cache(model, prompt, 30), "that attention mattered"


def test_no_head_off_and_no_explain_is_the_plain_generation_bitwise(model):
    prompt = random_ids(1, 9, seed=3)[0].tolist()
    sampled = SamplingParams(temperature=0.9, top_k=50, valid_utf8=False)
    plain = list(generate(Runner(model, exact_rows=1), prompt, 25, sampled, seed=7))
    again = list(generate(Runner(model, exact_rows=1), prompt, 25, sampled, seed=7, heads_off=[], explain=False))
    # bitwise: heads_off [] without explain is the plain path, the same step at the same shapes
    assert [(s.token, s.logprob) for s in again] == [(s.token, s.logprob) for s in plain]
    assert all(s.explain is None for s in again)


def test_an_exact_sequence_writes_only_its_own_cache_row(model):
    runner = Runner(model, max_batch=2, exact_rows=2)
    seqs = [Sequence(random_ids(1, 12, seed=b)[0].tolist(), 12, GREEDY) for b in range(2)]
    for b, seq in enumerate(seqs):
        runner.prefill(seq, b, 0, 12)
    before = [(k.clone(), v.clone()) for k, v in zip(runner.cache.k, runner.cache.v)]
    exact = Sequence(random_ids(1, 20, seed=9)[0].tolist(), 20, GREEDY, heads_off=[(0, 0)], explain=True)
    runner.prefill_exact(exact, runner.exact_row(1), 0, 20)
    for (k0, v0), k, v in zip(before, runner.cache.k, runner.cache.v):
        others = [r for r in range(runner.cache.rows) if r != runner.exact_row(1)]
        assert torch.equal(k0[others], k[others]) and torch.equal(v0[others], v[others])


@pytest.mark.parametrize("heads_off", [[], [(1, 1)]])
def test_each_bytes_pushes_sum_to_its_logit_and_are_the_attribution_of_the_final_text(model, heads_off):
    prompt = random_ids(1, 7, seed=4)[0].tolist()
    sampled = SamplingParams(temperature=1.0, valid_utf8=False)
    steps = list(generate(Runner(model, exact_rows=1), prompt, 20, sampled, seed=3, heads_off=heads_off, explain=True))
    ids = prompt + [s.token for s in steps]
    positions = list(range(len(prompt) - 1, len(ids) - 1))
    expected = attribute(model, run(model, ids, heads_off), positions)
    for step, want in zip(steps, expected, strict=True):
        got = step.explain
        assert (got.position, got.target) == (want.position, want.target)
        assert abs(got.error) < 1e-4 and abs(got.logit - want.logit) < 1e-4
        assert abs(got.embedding - want.embedding) < 1e-5
        torch.testing.assert_close(got.heads, want.heads, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.mlps, want.mlps, rtol=1e-4, atol=1e-5)
        for layer, head in heads_off:
            assert got.heads[layer, head] == 0
        top = got.top(3)
        assert [abs(c.logit) for c in top] == sorted((abs(c.logit) for c in got.contributions()), reverse=True)[:3]
