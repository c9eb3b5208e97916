"""Sampling: pure functions checked against Hugging Face's logits processors, and seeded generation."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from model import TinyLLM, numerics
from model.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    exponential_noise,
    logits_to_probs,
    sample,
    sample_rows,
)
from server.schemas import SamplingFields

try:
    import transformers
except ImportError:  # the comparisons then use hand computations only
    transformers = None

needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed")


def random_logits(seed: int, n: int = 256) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 3


# ------------------------------------------------------------------ pure functions


def test_temperature_zero_is_argmax():
    for seed in range(20):
        logits = random_logits(seed)
        assert sample(
            logits, SamplingParams(temperature=0, valid_utf8=False), torch.tensor([], dtype=torch.long), seed
        ) == int(logits.argmax())
        # top-k / top-p cannot change the greedy choice
        assert sample(
            logits,
            SamplingParams(temperature=0, top_k=3, top_p=0.1, valid_utf8=False),
            torch.tensor([], dtype=torch.long),
            seed,
        ) == int(logits.argmax())


def test_low_temperature_sharpens_high_temperature_flattens():
    logits = random_logits(0)
    cold, warm, hot = (logits_to_probs(logits, t) for t in (0.1, 1.0, 10.0))
    torch.testing.assert_close(warm, torch.softmax(logits, -1))
    assert cold.max() > warm.max() > hot.max()
    assert cold.argmax() == warm.argmax() == hot.argmax()


@pytest.mark.parametrize("k", [1, 2, 5, 50, 255])
def test_top_k_keeps_exactly_k_candidates(k):
    logits = random_logits(k)
    probs = logits_to_probs(logits, 1.0, top_k=k)
    kept = set(torch.nonzero(probs).flatten().tolist())
    assert kept == set(torch.topk(logits, k).indices.tolist())
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    # the kept tokens keep their relative odds
    top = torch.topk(logits, k).indices
    torch.testing.assert_close(probs[top], torch.softmax(logits[top], -1))


def test_top_k_zero_and_top_k_vocab_are_off():
    logits = random_logits(0)
    full = torch.softmax(logits, -1)
    torch.testing.assert_close(logits_to_probs(logits, 1.0, top_k=0), full)
    torch.testing.assert_close(logits_to_probs(logits, 1.0, top_k=256), full)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5 (1), 0.3 (3), 0.15 (2), 0.05 (0)
    logits = probs.log()
    cases = {0.3: {1}, 0.55: {1, 3}, 0.75: {1, 3}, 0.85: {1, 2, 3}, 0.97: {0, 1, 2, 3}, 1.0: {0, 1, 2, 3}}
    for p, expected in cases.items():
        out = logits_to_probs(logits, 1.0, top_p=p)
        assert set(torch.nonzero(out).flatten().tolist()) == expected, f"top_p={p}"
        kept = sorted(expected)
        torch.testing.assert_close(out[kept], probs[kept] / probs[kept].sum())
    # the most likely token survives any p
    assert set(torch.nonzero(logits_to_probs(logits, 1.0, top_p=1e-6)).flatten().tolist()) == {1}


def test_repetition_penalty_by_hand():
    logits = torch.tensor([2.0, -2.0, 0.0, 1.0, -1.0])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1, 2, 1]), 2.0)  # 1 appears twice: penalised once
    torch.testing.assert_close(out, torch.tensor([1.0, -4.0, 0.0, 1.0, -1.0]))
    assert torch.equal(logits, torch.tensor([2.0, -2.0, 0.0, 1.0, -1.0])), "the input is not modified"
    assert torch.equal(apply_repetition_penalty(logits, torch.tensor([0]), 1.0), logits)
    assert torch.equal(apply_repetition_penalty(logits, torch.tensor([], dtype=torch.long), 3.0), logits)


@needs_hf
@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.5])
def test_repetition_penalty_matches_hugging_face(penalty):
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = random_logits(1)
    previous = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(2))
    ours = apply_repetition_penalty(logits, previous, penalty)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(previous[None], logits[None].clone())[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(ours, logits)


@needs_hf
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 10, 1.0), (0.7, 0, 0.9), (1.3, 40, 0.6), (1.0, 0, 0.3)])
def test_filters_match_hugging_face(temperature, top_k, top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    for seed in range(5):
        logits = random_logits(seed)
        scores = TemperatureLogitsWarper(temperature)(None, logits[None].clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        theirs = torch.softmax(scores[0], -1)
        ours = logits_to_probs(logits, temperature, top_k, top_p)
        assert torch.equal(ours > 0, theirs > 0), f"seed {seed}: kept sets differ"
        torch.testing.assert_close(ours, theirs)


def test_same_seed_same_tokens_different_seed_differs():
    logits = torch.zeros(256)  # uniform: every draw depends on the noise alone
    params = SamplingParams(temperature=1.0)
    none = torch.tensor([], dtype=torch.long)

    def draws(seed):
        return [sample(logits, params, none, seed, step) for step in range(30)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert len(set(draws(1))) > 10
    assert draws(2**64 + 1) == draws(1), "seeds are taken mod 2**64"


RAW = SamplingParams(valid_utf8=False)  # no UTF-8 mask: a vocabulary of 3 here


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.1, 0.6, 0.3])
    n = 4000
    none = torch.tensor([], dtype=torch.long)
    counts = torch.bincount(torch.tensor([sample(probs.log(), RAW, none, seed, 0) for seed in range(n)]), minlength=3)
    torch.testing.assert_close(counts / n, probs, atol=0.03, rtol=0)
    # and along one sequence's steps
    counts = torch.bincount(torch.tensor([sample(probs.log(), RAW, none, 7, t) for t in range(n)]))
    torch.testing.assert_close(counts / n, probs, atol=0.03, rtol=0)


def test_the_noise_is_uniformly_exponential_and_independent_between_seeds_and_steps():
    noise = exponential_noise(list(range(64)), [0] * 32 + [1] * 32, 256)  # (64, 256)
    assert noise.shape == (64, 256) and (noise > 0).all()
    assert abs(noise.mean() - 1) < 0.02 and abs(noise.var() - 1) < 0.05, "Exp(1) has mean and variance 1"
    flat = noise.reshape(-1)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02, "neighbouring draws are uncorrelated"
    again = exponential_noise([5, 35], [0, 1], 256)
    assert (again[0] == noise[5]).all() and (again[1] == noise[35]).all(), "a row depends on its key alone"


def test_a_row_samples_the_same_alone_as_in_any_batch():
    """Batch invariance of the sampler itself: every row's token and log-probabilities are bitwise the same
    computed alone or among 63 others with other parameters."""
    torch.manual_seed(0)
    logits = torch.randn(64, 256) * 4
    params = [
        SamplingParams(temperature=[0.0, 0.7, 1.0, 1.5][i % 4], top_k=[0, 5, 40][i % 3], top_p=[1.0, 0.9][i % 2])
        for i in range(64)
    ]
    seeds, steps = list(range(100, 164)), [i % 7 for i in range(64)]
    none = [None] * 64
    batched = sample_rows(logits.clone(), params, none, [0] * 64, seeds, steps)
    batched_logprobs = numerics.log_softmax(logits)
    for i in range(64):
        alone = sample_rows(
            logits[i : i + 1].clone(), params[i : i + 1], none[:1], [0], seeds[i : i + 1], steps[i : i + 1]
        )
        assert alone == [batched[i]], f"row {i}"
        # bitwise: model.numerics.log_softmax reduces each row on its own, in index order (the fixed-order native code,
        # or torch's over the last dimension without it); generation's logprobs rely on it
        assert torch.equal(numerics.log_softmax(logits[i : i + 1])[0], batched_logprobs[i]), f"row {i} logprobs"


# ------------------------------------------------------------------ TinyLLM.generate


@pytest.fixture(scope="module")
def llm(tiny_checkpoint) -> TinyLLM:
    return TinyLLM.load(tiny_checkpoint, device="cpu")


def test_generate_with_a_seed_is_reproducible(llm):
    a = llm.generate("Hello", max_new_tokens=20, temperature=1.0, seed=7)
    b = llm.generate("Hello", max_new_tokens=20, temperature=1.0, seed=7)
    c = llm.generate("Hello", max_new_tokens=20, temperature=1.0, seed=8)
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens
    assert len(a.tokens) == 20 and a.finish_reason == "length"
    assert a.text == bytes(a.tokens).decode("utf-8", errors="replace")
    assert [s.token for s in a.steps] == a.tokens


def test_generate_greedy_matches_argmax_of_full_forward(llm):
    g = llm.generate("The", max_new_tokens=10, temperature=0, utf8="any")
    ids = list(b"The")
    with torch.inference_mode():
        for _ in range(10):
            logits, _ = llm.model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert g.tokens == ids[3:]
    # logprobs are log-softmax of the raw logits
    torch.testing.assert_close(g.steps[0].logprobs.exp().sum(), torch.tensor(1.0))


def test_stop_string_ends_generation_and_is_excluded(llm):
    full = llm.generate("abc", max_new_tokens=40, temperature=0).tokens
    data = bytes(full)
    # a stop string from the greedy continuation: the first 2-byte ASCII window past the start
    start = next(i for i in range(3, len(data) - 1) if data[i : i + 2].isascii())
    stop = data[start : start + 2].decode()
    cut = data.find(stop.encode())  # its first occurrence ends generation
    assert cut > 0
    g = llm.generate("abc", max_new_tokens=40, temperature=0, stop=["\x00never", stop])
    assert g.finish_reason == "stop"
    assert g.tokens == full[:cut]
    assert g.text == data[:cut].decode("utf-8", errors="replace")
    assert stop not in g.text
    assert [s.token for s in g.steps] == g.tokens, "steps correspond to the returned tokens"


def test_stop_string_never_seen_runs_to_length(llm):
    g = llm.generate("abc", max_new_tokens=15, temperature=0, stop=["\x00\x01\x02 never"])
    assert g.finish_reason == "length" and len(g.tokens) == 15


def test_finish_reason_context_full(llm):
    ctx = llm.config.context_length  # 64
    g = llm.generate("x" * (ctx - 4), max_new_tokens=10, temperature=0)
    assert g.finish_reason == "context_full"
    assert len(g.tokens) == 4, "prompt plus output fill the context exactly"
    g = llm.generate("x" * ctx, max_new_tokens=10, temperature=0)
    assert g.finish_reason == "context_full" and g.tokens == []
    g = llm.generate("x" * (ctx - 10), max_new_tokens=10, temperature=0)
    assert g.finish_reason == "length" and len(g.tokens) == 10


def test_the_http_sampling_fields_are_the_sampling_parameters():
    """A sampling parameter is added in two places, SamplingParams and its HTTP field with bounds: this holds them
    together (utf8 is the HTTP name of valid_utf8)."""
    http = set(SamplingFields.model_fields) - {"utf8"}
    assert http == {f.name for f in fields(SamplingParams)} - {"valid_utf8"}
