"""Property-based tests (hypothesis) of the tokenizer and the sampling parameters.

Tokenizer: any text round-trips; the incremental decoder on any bytes gives exactly the full decode and
never half a character. Sampling: any parameters the request schema accepts give a valid byte for any
finite logits (tiny temperatures and penalties included); anything outside the bounds is refused at the
edge by the schema, so it never reaches the engine.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from model.generate import TextAssembler
from model.sampling import sample
from model.tokenizer import ByteTokenizer, IncrementalDecoder
from server.openai_schemas import CompletionRequest
from server.schemas import GenerateRequest

tok = ByteTokenizer()
valid_text = st.text(st.characters(exclude_categories=("Cs",)))  # any Unicode text: no lone surrogates
FAST = settings(max_examples=200, deadline=None)


@FAST
@given(valid_text)
def test_any_text_round_trips(text):
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    spans = tok.byte_char_spans(text)
    assert len(spans) == len(ids) and all(0 <= s < e <= len(text) for s, e in spans)
    assert len(tok.char_labels(ids)) == len(ids)


@FAST
@given(st.binary(max_size=64))
def test_incremental_decoder_on_any_bytes_equals_the_full_decode(data):
    decoder = IncrementalDecoder()
    pieces = [decoder.push(b) for b in data] + [decoder.flush()]
    assert "".join(pieces) == data.decode("utf-8", errors="replace")
    for piece in pieces:
        piece.encode("utf-8")  # never a lone surrogate or half a character
    assert len(tok.char_labels(list(data))) == len(data)
    assert all(isinstance(tok.label(b), str) and tok.label(b) for b in data)


@FAST
@given(st.binary(max_size=64))
def test_relabelling_the_last_character_per_byte_gives_the_char_labels_of_all(data):
    """What the page does as bytes stream in: relabel only the newest byte's character, never the rest."""
    labels = []
    for n in range(1, len(data) + 1):
        labels.append("")
        last = tok.last_char_labels(data[:n])
        labels[n - len(last) :] = last
        assert labels == tok.char_labels(data[:n])


@FAST
@given(st.binary(max_size=48), st.lists(st.binary(min_size=1, max_size=4), max_size=3))
def test_text_assembler_spells_the_bytes_before_the_stop(data, stops):
    """What the engine streams is the decode of the bytes up to the first stop string, whatever the bytes."""
    assembler = TextAssembler(stops)
    out, stopped_at = [], None
    for i, b in enumerate(data):
        delta, stopped = assembler.push(b)
        out.append(delta)
        if stopped:
            stopped_at = i
            break
    if stopped_at is None:
        out.append(assembler.finish())
    text = "".join(out)
    kept = data[: stopped_at + 1] if stopped_at is not None else data
    if stopped_at is not None:
        hit = max(len(s) for s in stops if kept.endswith(s))
        kept = kept[: len(kept) - hit]
    assert text == kept.decode("utf-8", errors="replace")


# ------------------------------------------------------------------ sampling parameters


def bounded(lo, hi, **kw):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, **kw)


generate_params = st.fixed_dictionaries(
    {
        "temperature": st.one_of(st.just(0.0), bounded(0, 100), st.sampled_from([5e-324, 1e-300, 1e-40, 1e-8])),
        "top_k": st.integers(0, 256),
        "top_p": st.one_of(bounded(0, 1, exclude_min=True), st.sampled_from([5e-324, 1e-30, 1.0])),
        "repetition_penalty": st.one_of(bounded(0, 100, exclude_min=True), st.sampled_from([5e-324, 1e-30, 100.0])),
    }
)
logit_rows = st.one_of(
    st.builds(
        lambda seed, scale: torch.randn(256, generator=torch.Generator().manual_seed(seed)) * scale,
        st.integers(0, 2**32),
        st.sampled_from([0.0, 1e-6, 1.0, 30.0, 1e4, 1e30]),
    ),
    st.lists(st.floats(-(2.0**126), 2.0**126, width=32), min_size=256, max_size=256).map(torch.tensor),
)


@settings(max_examples=300, deadline=None)
@given(generate_params, logit_rows, st.lists(st.integers(0, 255), max_size=8), st.integers(0, 2**63 - 1))
def test_any_accepted_parameters_give_a_byte(params, logits, previous, seed):
    body = GenerateRequest.model_validate({"prompt": "x", **params})  # the edge accepts them...
    token = sample(logits, body.sampling_params(), torch.tensor(previous, dtype=torch.long), seed)
    assert 0 <= token < 256  # ...and the sampler gives a byte, never an exception (which would fail the batch)


@settings(max_examples=200, deadline=None)
@given(bounded(-2, 2), bounded(-2, 2), bounded(0, 100), logit_rows, st.lists(st.integers(0, 255), max_size=8))
def test_any_accepted_openai_penalties_give_a_byte(presence, frequency, temperature, logits, previous):
    body = CompletionRequest.model_validate(
        {
            "model": "m",
            "prompt": "x",
            "temperature": temperature,
            "presence_penalty": presence,
            "frequency_penalty": frequency,
        }
    )
    token = sample(
        logits,
        body.sampling_params(),
        torch.tensor(previous, dtype=torch.long),
        0,
        n_prompt=0,
    )
    assert 0 <= token < 256


out_of_bounds = st.one_of(
    st.fixed_dictionaries(
        {
            "temperature": st.one_of(
                st.floats(max_value=-1e-9),
                st.floats(min_value=100.001),
                st.sampled_from([math.nan, math.inf, -math.inf]),
            )
        }
    ),
    st.fixed_dictionaries({"top_p": st.one_of(st.floats(max_value=0), st.floats(min_value=1.0001), st.just(math.nan))}),
    st.fixed_dictionaries({"top_k": st.one_of(st.integers(max_value=-1), st.integers(min_value=257))}),
    st.fixed_dictionaries(
        {"repetition_penalty": st.one_of(st.floats(max_value=0), st.floats(min_value=100.001), st.just(math.nan))}
    ),
    st.fixed_dictionaries({"max_new_tokens": st.integers(max_value=-1)}),
    st.fixed_dictionaries({"seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63))}),
    st.fixed_dictionaries({"logprobs": st.one_of(st.integers(max_value=-1), st.integers(min_value=21))}),
)


@FAST
@given(out_of_bounds)
def test_out_of_bounds_parameters_are_refused_at_the_edge(params):
    with pytest.raises(ValidationError) as e:
        GenerateRequest.model_validate({"prompt": "x", **params})
    assert e.value.errors()[0]["loc"][0] == next(iter(params))
