"""What each attention head does, from its exact probabilities: pure functions over an attention tensor
(n_layer, n_head, T, T) (row q: query byte q over key bytes 0..q) and the T byte ids it was computed on.

Definitions (all shares are attention probability mass, so they lie in [0, 1]):

- character: a complete, valid UTF-8 sequence (1 to 4 bytes); any byte that is not part of one (a stray
  continuation byte, a truncated or overlong sequence, 0xC0/0xC1/0xF5..0xFF) is a character of its own.
- word: a maximal run of bytes that are not ASCII whitespace (space, \\t, \\n, \\v, \\f, \\r); whitespace
  bytes belong to no word. Multi-byte characters never split a word: their bytes are all non-whitespace.

Per layer and head, `summarize_heads` gives, each averaged uniformly over its queries:

- mean_distance: sum over keys of p(k) * (q - k), in bytes; over queries 1..T-1.
- previous_byte: p(q - 1); over queries 1..T-1.
- current_byte: p(q), the query's own byte; over queries 1..T-1.
- same_character: the mass on earlier bytes of the query's own character; over the queries that have such
  bytes (continuation bytes of a multi-byte character), NaN when the text has none.
- same_word: the mass on earlier bytes of the query's own word; over the queries that have such bytes
  (every word byte but a word's first), NaN when there are none.
- first_position: p(0); over queries 1..T-1.
- duplicate_byte: the mass on earlier bytes equal to the query's byte; over the queries that have one.
- induction: the mass on bytes that follow an earlier copy of the query's byte (the byte after it: what an induction
  head reads, TransformerLens's induction pattern); over the queries that have one. model/detectors.py has
  TransformerLens's own scores (over every query) and its repeated-random-sequence test.
- entropy_bits: -sum p log2 p of the row; over queries 1..T-1.

Query 0 is left out everywhere: it can only attend to itself, so it says nothing about the head.
"""

from __future__ import annotations

import numpy as np

from model.tokenizer import char_spans

METRICS = (
    "mean_distance",
    "previous_byte",
    "current_byte",
    "same_character",
    "same_word",
    "first_position",
    "entropy_bits",
    "duplicate_byte",
    "induction",
)
WHITESPACE = frozenset(b" \t\n\v\f\r")
# A head is labelled by the first of these shares that reaches LABEL_THRESHOLD; heads with none stay unlabelled.
# The order matters where patterns overlap: a previous-byte head also puts most of a continuation byte's mass
# on its own character, so "previous byte" is tested before "same character", and both before "same word".
LABELS = (
    ("first_position", "start of text"),
    ("previous_byte", "previous byte"),
    ("current_byte", "current byte"),
    ("same_character", "same character"),
    ("same_word", "same word"),
    ("induction", "induction"),  # last: a head whose habit is local can match it by chance on short texts
)
LABEL_THRESHOLD = 0.6


def char_of_byte(spans: list[tuple[int, int]]) -> np.ndarray:
    """For every byte, the index of the character (span) it belongs to."""
    return (
        np.concatenate([np.full(end - start, c) for c, (start, end) in enumerate(spans)]).astype(np.int64)
        if spans
        else np.zeros(0, dtype=np.int64)
    )


def word_of_byte(ids) -> np.ndarray:
    """For every byte, the index of its word, or -1 for whitespace bytes."""
    words, word, inside = [], -1, False
    for b in ids:
        if int(b) in WHITESPACE:
            words.append(-1)
            inside = False
        else:
            if not inside:
                word, inside = word + 1, True
            words.append(word)
    return np.array(words, dtype=np.int64)


def _as_array(attn, ids) -> np.ndarray:
    a = np.asarray(attn.detach().cpu() if hasattr(attn, "detach") else attn, dtype=np.float64)
    assert a.ndim == 4 and a.shape[-1] == a.shape[-2], f"attention must be (n_layer, n_head, T, T), got {a.shape}"
    assert a.shape[-1] == len(ids), f"attention covers {a.shape[-1]} bytes but {len(ids)} ids were given"
    return a


def _mean_over(values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Mean over the chosen query positions of values (..., T); NaN when none is chosen."""
    if not queries.any():
        return np.full(values.shape[:-1], np.nan)
    return values[..., queries].mean(axis=-1)


def summarize_heads(attn, ids) -> dict[str, np.ndarray]:
    """Per layer and head, every metric of METRICS as an (n_layer, n_head) float64 array (see the module doc)."""
    a = _as_array(attn, ids)
    T = a.shape[-1]
    q = np.arange(T)
    later = q >= 1
    earlier = q[None, :] < q[:, None]  # (T, T): key before query
    chars = char_of_byte(char_spans(ids))
    same_char = earlier & (chars[:, None] == chars[None, :])
    words = word_of_byte(ids)
    same_word = earlier & (words[:, None] == words[None, :]) & (words[:, None] >= 0)
    byte = np.asarray([int(b) for b in ids])
    duplicate = earlier & (byte[:, None] == byte[None, :])
    induction = np.zeros_like(duplicate)
    induction[:, 1:] = duplicate[:, :-1]  # key k when byte k - 1 is an earlier copy of the query's byte
    distance = np.maximum(q[:, None] - q[None, :], 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(a > 0, a * np.log2(np.where(a > 0, a, 1.0)), 0.0)
    previous = np.zeros(a.shape[:-1])
    previous[..., 1:] = a[..., q[1:], q[1:] - 1]
    return {
        "mean_distance": _mean_over((a * distance).sum(-1), later),
        "previous_byte": _mean_over(previous, later),
        "current_byte": _mean_over(a[..., q, q], later),
        "same_character": _mean_over((a * same_char).sum(-1), same_char.any(-1)),
        "same_word": _mean_over((a * same_word).sum(-1), same_word.any(-1)),
        "first_position": _mean_over(a[..., :, 0], later),
        "entropy_bits": _mean_over(-plogp.sum(-1), later),
        "duplicate_byte": _mean_over((a * duplicate).sum(-1), duplicate.any(-1)),
        "induction": _mean_over((a * induction).sum(-1), induction.any(-1)),
    }


def label_heads(summary: dict[str, np.ndarray], threshold: float = LABEL_THRESHOLD) -> list[list[str | None]]:
    """A short plain-language label per head ("previous byte", ...) where one share reaches the threshold."""
    n_layer, n_head = summary["previous_byte"].shape
    labels = []
    for layer in range(n_layer):
        row = []
        for head in range(n_head):
            row.append(
                next((label for metric, label in LABELS if summary[metric][layer, head] >= threshold), None)
            )  # NaN never reaches it
        labels.append(row)
    return labels


def character_attention(attn, ids) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Attention between characters: (n_layer, n_head, C, C) and the C characters' byte spans.

    A character's row is the mean of its bytes' rows (each byte's query counts the same), with the keys summed
    over each character's bytes, so every row still sums to 1. A character attends to itself through the
    earlier bytes of its own sequence (its first byte cannot see the later ones).
    """
    a = _as_array(attn, ids)
    spans = char_spans(ids)
    # A character's bytes are contiguous, so both sums are segment sums (O(T²) per head, not a T³ matmul).
    starts = np.array([start for start, _ in spans])
    lengths = np.array([end - start for start, end in spans])
    keys = np.add.reduceat(a, starts, axis=-1)  # (L, H, T, C): keys summed over each character's bytes
    return np.add.reduceat(keys, starts, axis=-2) / lengths[:, None], spans  # (L, H, C, C): rows averaged
