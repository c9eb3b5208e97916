"""model/heads.py against explicit loops over a random attention tensor, and against hand-built heads."""

import math

import numpy as np
import pytest
import torch

from model import TinyLLM
from model.heads import (
    LABEL_THRESHOLD,
    METRICS,
    character_attention,
    label_heads,
    summarize_heads,
    word_of_byte,
)
from model.tokenizer import char_spans

TEXT = "Café жук 中文 ok😀 x"  # ASCII, é (2 bytes), Cyrillic (2), CJK (3), emoji (4), spaces


def random_attention(n_layer: int, n_head: int, T: int, seed: int = 0) -> np.ndarray:
    """Causal rows of random probabilities, some exact zeros among the allowed keys."""
    rng = np.random.default_rng(seed)
    a = rng.random((n_layer, n_head, T, T)) * (rng.random((n_layer, n_head, T, T)) > 0.2)
    a = np.tril(a)
    a[..., np.arange(T), np.arange(T)] += 1e-3  # every row keeps some mass
    return a / a.sum(-1, keepdims=True)


def spans_from_text(text: str) -> list[tuple[int, int]]:
    """Character spans the plain way: Python's own characters and their UTF-8 lengths."""
    spans, pos = [], 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        spans.append((pos, pos + n))
        pos += n
    return spans


def loop_summary(a: np.ndarray, ids: list[int], spans) -> dict[str, np.ndarray]:
    """Every metric recomputed with explicit loops, straight from its definition."""
    T = len(ids)
    char = {}
    for c, (s, e) in enumerate(spans):
        for b in range(s, e):
            char[b] = c
    word, w, inside = {}, -1, False
    for i, b in enumerate(ids):
        if chr(b) in " \t\n\v\f\r" and b < 128:
            inside = False
        else:
            if not inside:
                w, inside = w + 1, True
            word[i] = w
    out = {m: np.zeros(a.shape[:2]) for m in METRICS}
    for layer in range(a.shape[0]):
        for h in range(a.shape[1]):
            p = a[layer, h]
            acc = {m: [] for m in METRICS}
            for q in range(1, T):
                acc["mean_distance"].append(sum(p[q, k] * (q - k) for k in range(q + 1)))
                acc["previous_byte"].append(p[q, q - 1])
                acc["current_byte"].append(p[q, q])
                acc["first_position"].append(p[q, 0])
                acc["entropy_bits"].append(-sum(x * math.log2(x) for x in p[q, : q + 1] if x > 0))
                own = [k for k in range(q) if char[k] == char[q]]
                if own:
                    acc["same_character"].append(sum(p[q, k] for k in own))
                same = [k for k in range(q) if q in word and word.get(k) == word[q]]
                if same:
                    acc["same_word"].append(sum(p[q, k] for k in same))
                copies = [k for k in range(q) if ids[k] == ids[q]]
                if copies:
                    acc["duplicate_byte"].append(sum(p[q, k] for k in copies))
                after = [k + 1 for k in copies]
                if after:
                    acc["induction"].append(sum(p[q, k] for k in after))
            for m in METRICS:
                out[m][layer, h] = np.mean(acc[m]) if acc[m] else np.nan
    return out


def test_char_spans_follow_python_characters():
    ids = list(TEXT.encode("utf-8"))
    assert char_spans(ids) == spans_from_text(TEXT)


def test_invalid_and_partial_bytes_are_characters_of_their_own():
    # a stray continuation byte, 0xFF, an overlong 2-byte form, a truncated 3-byte sequence at the end
    ids = [0x41, 0x80, 0xFF, 0xC0, 0xAF, 0xC3, 0xA9, 0xE4, 0xB8]
    assert char_spans(ids) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 7), (7, 8), (8, 9)]


def test_words_are_runs_of_non_whitespace_bytes():
    ids = list("a bc\t\né!".encode())
    assert word_of_byte(ids).tolist() == [0, -1, 1, 1, -1, -1, 2, 2, 2]


def test_summary_matches_explicit_loops():
    ids = list(TEXT.encode("utf-8"))
    a = random_attention(2, 3, len(ids))
    got = summarize_heads(a, ids)
    want = loop_summary(a, ids, spans_from_text(TEXT))
    for m in METRICS:
        np.testing.assert_allclose(got[m], want[m], rtol=1e-10, atol=1e-12, err_msg=m)


def test_summary_accepts_torch_tensors():
    ids = list(TEXT.encode("utf-8"))
    a = random_attention(1, 2, len(ids), seed=3)
    for m, v in summarize_heads(torch.tensor(a, dtype=torch.float32), ids).items():
        np.testing.assert_allclose(v, summarize_heads(a, ids)[m], rtol=1e-5, atol=1e-6, err_msg=m)


def test_same_character_is_nan_for_ascii_text():
    ids = list(b"plain ascii")
    s = summarize_heads(random_attention(1, 1, len(ids)), ids)
    assert np.isnan(s["same_character"]).all()
    assert label_heads(s)[0][0] in (None, "start of text", "previous byte", "current byte", "same word")


def hand_built(T: int, key_of) -> np.ndarray:
    """One head where query q puts all its mass on key_of(q)."""
    a = np.zeros((1, 1, T, T))
    for q in range(T):
        a[0, 0, q, key_of(q)] = 1.0
    return a


def test_hand_built_heads_get_their_labels():
    ids = list(TEXT.encode("utf-8"))
    T = len(ids)
    cases = {
        "previous byte": hand_built(T, lambda q: max(q - 1, 0)),
        "start of text": hand_built(T, lambda q: 0),
        "current byte": hand_built(T, lambda q: q),
    }
    for label, a in cases.items():
        s = summarize_heads(a, ids)
        assert label_heads(s) == [[label]], (label, {m: float(v[0, 0]) for m, v in s.items()})
    prev = summarize_heads(cases["previous byte"], ids)
    assert prev["previous_byte"][0, 0] == 1.0 and prev["mean_distance"][0, 0] == 1.0
    assert prev["entropy_bits"][0, 0] == 0.0

    # continuation bytes look at their character's first byte; the rest of the bytes at themselves
    emoji = list("😀😀😀😀🎉🎉".encode())
    first_byte = {b: s for s, e in char_spans(emoji) for b in range(s, e)}
    s = summarize_heads(hand_built(len(emoji), lambda q: first_byte[q]), emoji)
    assert s["same_character"][0, 0] == 1.0 and s["previous_byte"][0, 0] < LABEL_THRESHOLD
    assert label_heads(s) == [["same character"]]


def test_uniform_head_has_no_label_and_log2_entropy():
    ids = list(TEXT.encode("utf-8"))
    T = len(ids)
    a = np.tril(np.ones((1, 1, T, T)))
    a /= a.sum(-1, keepdims=True)
    s = summarize_heads(a, ids)
    assert label_heads(s) == [[None]]
    np.testing.assert_allclose(s["entropy_bits"][0, 0], np.mean([math.log2(q + 1) for q in range(1, T)]))
    np.testing.assert_allclose(s["mean_distance"][0, 0], np.mean([q / 2 for q in range(1, T)]))


def test_character_attention_matches_explicit_loops():
    ids = list(TEXT.encode("utf-8")) + [0xFF, 0xE4, 0xB8]
    a = random_attention(2, 2, len(ids), seed=7)
    got, spans = character_attention(a, ids)
    assert spans == spans_from_text(TEXT) + [
        (len(ids) - 3, len(ids) - 2),
        (len(ids) - 2, len(ids) - 1),
        (len(ids) - 1, len(ids)),
    ]
    C = len(spans)
    assert got.shape == (2, 2, C, C)
    for layer in range(2):
        for h in range(2):
            for ci, (qs, qe) in enumerate(spans):
                for cj, (ks, ke) in enumerate(spans):
                    want = sum(a[layer, h, q, k] for q in range(qs, qe) for k in range(ks, ke)) / (qe - qs)
                    assert got[layer, h, ci, cj] == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0)
    assert np.allclose(np.triu(got, 1), 0)  # still causal between characters


def test_on_a_real_model(tiny_checkpoint):
    """The public API's attention goes straight in: rows sum to one, every metric is a share or finite."""
    llm = TinyLLM.load(tiny_checkpoint, device="cpu")
    text = "Ωμέγα и ёж 😀!"
    ids = list(text.encode("utf-8"))
    s = summarize_heads(llm.attention(text), ids)
    for m in METRICS:
        assert s[m].shape == (llm.config.n_layer, llm.config.n_head)
        assert np.isfinite(s[m]).all(), m
    for m in ("previous_byte", "current_byte", "same_character", "same_word", "first_position"):
        assert ((s[m] >= -1e-6) & (s[m] <= 1 + 1e-6)).all(), m
    chars, spans = character_attention(llm.attention(text), ids)
    assert len(spans) == len(text)
    np.testing.assert_allclose(chars.sum(-1), 1.0, atol=1e-5)


def test_an_induction_head_is_labelled_so():
    ids = list(b"xyzwvu-xyzwvu")  # the second copy's bytes each have an earlier copy; the byte after it is 6 back
    n = 7
    s = summarize_heads(hand_built(len(ids), lambda q: q - n + 1 if q >= n else q), ids)
    assert s["induction"][0, 0] == 1.0 and s["duplicate_byte"][0, 0] == 0.0
    assert label_heads(s) == [["induction"]]
