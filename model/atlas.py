"""The attention atlas: for every layer and head, over a whole corpus, how much each byte attends to each other byte.

The corpus is cut into non-overlapping windows of the model's context (the last, shorter one included), each run once
through the exact float32 model with a reader at every layer's attn.hook_pattern (model/hooks.py). In a window every
(query position q, key position k ≤ q) is one occurrence of the byte pair (ids[q], ids[k]) at distance q − k. Per pair:

- count: its occurrences (the same for every head);
- mean weight: per head, the mean attention probability from the query byte to the key byte over the occurrences;
- lift: per head, the summed weight over the summed weight the head gives, on average, to any key at the same
  distance (the head's distance profile): 1 is "no more than its habit", 3 is three times as much.

Per multi-byte character (a complete UTF-8 sequence inside one window): per head, the weight from its byte i to its
byte j < i of the same occurrence, the count and the lift the same way: the character "binding" of the issue.

Examples: per pair, the three occurrences at the smallest distance from 1 to 32 (earliest first; a pair that never
occurs that close has none), with every head's weight at each and the text around them (at most 64 bytes, up to 8
after the query).

The result is written next to the checkpoint (atlas.safetensors + atlas.json, with the data's sha256), atomically:
an interrupted run leaves the previous atlas or none. model/atlas_store.py reads it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from model import json_file
from model.detectors import text_sums
from model.hooks import Hooks, point, record
from model.tokenizer import char_spans

ATLAS_TENSORS, ATLAS_JSON = "atlas.safetensors", "atlas.json"
FORMAT = 1
EXAMPLES_PER_PAIR = 3
EXAMPLE_BYTES, EXAMPLE_AFTER = 64, 8  # the text shown around an example: up to 64 bytes, 8 of them after the query
KEY_BYTES = 16  # and, when the key is further back than that, 16 bytes around the key
MAX_CHAR_BYTES = 4
EXAMPLE_RADIUS = 32  # examples are occurrences at distance 1..32


@dataclass
class Corpus:
    """The bytes an atlas is computed over, and where they came from."""

    data: np.ndarray  # uint8
    sources: list[dict]  # {path, bytes, sha256, part}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data.tobytes()).hexdigest()


@dataclass
class Accumulator:
    """The running sums over windows (float64 weights; every array is over the flattened (layer, head) axis LH)."""

    n_lh: int
    ctx: int
    pair_count: torch.Tensor = None  # (65536,) int64: pair = query byte * 256 + key byte
    pair_weight: torch.Tensor = None  # (LH, 65536) float64
    pair_distance_count: torch.Tensor = None  # (65536 * ctx,) int32: for the lift's expectation
    distance_count: torch.Tensor = None  # (ctx,) int64
    distance_weight: torch.Tensor = None  # (LH, ctx) float64
    detector_mass: dict = field(default_factory=dict)  # model/detectors.py's text scores: name -> [mass (LH,), rows]
    examples: dict = field(default_factory=dict)  # running best: key, pair, query, key_pos (E,), weights (E, LH)
    chars: dict = field(default_factory=dict)  # character bytes -> index
    char_rows: list = field(default_factory=list)  # per window: (char index, i, j, weights (N, LH))

    def __post_init__(self):
        self.pair_count = torch.zeros(65536, dtype=torch.int64)
        self.pair_weight = torch.zeros(self.n_lh, 65536, dtype=torch.float64)
        self.pair_distance_count = torch.zeros(65536 * self.ctx, dtype=torch.int32)
        self.distance_count = torch.zeros(self.ctx, dtype=torch.int64)
        self.distance_weight = torch.zeros(self.n_lh, self.ctx, dtype=torch.float64)


_ENTRIES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def causal_entries(T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (query, key ≤ query) of a window of T bytes, as two index vectors of length T(T+1)/2 (kept per T)."""
    if T not in _ENTRIES:
        _ENTRIES[T] = tuple(torch.tril_indices(T, T))
    return _ENTRIES[T]


def distance_sums(pattern: torch.Tensor) -> torch.Tensor:
    """Per head, the probability summed over every (q, q − d): (LH, T, T) -> (LH, T) indexed by d.

    Row q's entry at distance d sits at flat index q(T + 1) − d. With T − 1 zeros in front, a strided view with row
    stride T + 1 puts it in column T − 1 − d of row q; what else lands in a row is the causal mask's zeros (above the
    diagonal of the row before) or the padding, so a column sum is the diagonal sum."""
    LH, T, _ = pattern.shape
    flat = torch.cat([pattern.new_zeros(LH, T - 1), pattern.reshape(LH, T * T)], dim=1)  # (LH, T² + T − 1)
    skew = flat.as_strided((LH, T, T), (flat.stride(0), T + 1, 1))  # [h, q, T − 1 − d] = pattern[h, q, q − d]
    return skew.sum(1).flip(-1)


def add_window(acc: Accumulator, ids: torch.Tensor, start: int, pattern: torch.Tensor) -> None:
    """One window's bytes (T,) at corpus offset `start`, and its probabilities (LH, T, T), into the sums.

    The pair sums are one-hot products over the window's distinct bytes (u of them): onehot(q)ᵀ · pattern ·
    onehot(k), (u, T)(T, T)(T, u) per head, which BLAS does faster than scattering T²/2 entries one by one."""
    T = ids.numel()
    q, k = causal_entries(T)
    distinct, local = torch.unique(ids, return_inverse=True)  # (u,), (T,)
    onehot = torch.nn.functional.one_hot(local, distinct.numel()).to(pattern.dtype)  # (T, u)
    sums = onehot.T @ (pattern @ onehot)  # (LH, u, u): [h, query byte, key byte]
    counts = onehot.T @ torch.ones(T, T).tril() @ onehot  # (u, u)
    pair_of = (distinct[:, None] * 256 + distinct[None, :]).flatten()  # (u²,)
    acc.pair_weight.index_add_(1, pair_of, sums.reshape(acc.n_lh, -1).double())
    acc.pair_count.index_add_(0, pair_of, counts.flatten().round().long())
    pair = ids[q] * 256 + ids[k]
    distance = q - k
    acc.pair_distance_count.index_add_(0, pair * acc.ctx + distance, torch.ones_like(pair, dtype=torch.int32))
    acc.distance_count[:T] += torch.arange(T, 0, -1)  # T − d pairs at distance d
    acc.distance_weight[:, :T] += distance_sums(pattern).double()
    near = (distance > 0) & (distance <= EXAMPLE_RADIUS)
    keep_examples(acc, pattern, pair[near], distance[near], q[near], k[near], start)
    add_characters(acc, ids, pattern)
    for name, (mass, rows) in text_sums(pattern, ids.tolist()).items():
        kept = acc.detector_mass.setdefault(name, [0.0, 0.0])
        kept[0], kept[1] = kept[0] + mass, kept[1] + rows


def keep_examples(acc, pattern, pair, distance, q, k, start) -> None:
    """Merge this window's occurrences into the running three per pair at the smallest distance (then earliest)."""
    new = top_per_pair({"key": pair * (EXAMPLE_RADIUS + 1) + distance, "pair": pair, "q": q, "k": k})
    rows = {
        "key": new["key"],
        "pair": new["pair"],
        "query": new["q"] + start,
        "key_pos": new["k"] + start,
        "w": pattern[:, new["q"], new["k"]].T,  # (n, LH)
    }
    if acc.examples:
        rows = top_per_pair({name: torch.cat([acc.examples[name], rows[name]]) for name in rows})
    acc.examples = rows


def top_per_pair(rows: dict) -> dict:
    """The first EXAMPLES_PER_PAIR rows of every pair by (distance, then corpus position): rows sorted by key."""
    order = torch.sort(rows["key"], stable=True).indices
    pair = rows["pair"][order]
    index = torch.arange(pair.numel())
    starts = torch.ones_like(pair, dtype=torch.bool)
    starts[1:] = pair[1:] != pair[:-1]
    group_start = torch.cummax(torch.where(starts, index, 0), 0).values
    keep = order[(index - group_start) < EXAMPLES_PER_PAIR]
    return {name: value[keep] for name, value in rows.items()}


def add_characters(acc: Accumulator, ids: torch.Tensor, pattern: torch.Tensor) -> None:
    """Every multi-byte character of the window: the weight of each of its bytes i on each earlier byte j."""
    rows_c, rows_i, rows_j, rows_q, rows_k = [], [], [], [], []
    id_list = ids.tolist()
    for s, e in char_spans(id_list):
        if e - s < 2 or e - s > MAX_CHAR_BYTES:
            continue
        chunk = bytes(id_list[s:e])
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:  # a stray or cut sequence is a character of its own, not a binding
            continue
        c = acc.chars.setdefault(chunk, len(acc.chars))
        for i in range(1, e - s):
            for j in range(i):
                rows_c.append(c)
                rows_i.append(i)
                rows_j.append(j)
                rows_q.append(s + i)
                rows_k.append(s + j)
    if rows_c:
        w = pattern[:, torch.tensor(rows_q), torch.tensor(rows_k)].double().T  # (N, LH)
        acc.char_rows.append((torch.tensor(rows_c), torch.tensor(rows_i), torch.tensor(rows_j), w))


@torch.inference_mode()
def window_patterns(model, windows: torch.Tensor) -> torch.Tensor:
    """Every layer's probabilities over a batch of windows (B, T): (B, LH, T, T), float32."""
    n_layer = model.config.n_layer
    kept: dict[str, torch.Tensor] = {}
    model(windows, hooks=Hooks((point(i, "attn.hook_pattern"), record(kept)) for i in range(n_layer)))
    return torch.cat([kept[point(i, "attn.hook_pattern")] for i in range(n_layer)], dim=1)


def windows_of(corpus: np.ndarray, ctx: int) -> list[tuple[int, int]]:
    """(start, end) of the non-overlapping windows; a last window shorter than 2 bytes has no pair and is left out."""
    return [(s, min(s + ctx, corpus.size)) for s in range(0, corpus.size, ctx) if min(s + ctx, corpus.size) - s >= 2]


def compute(model, corpus: Corpus, batch: int = 4, progress: bool = True) -> dict:
    """The atlas of `model` over `corpus`: {tensor name: tensor} and the JSON record (see finish)."""
    if corpus.data.size < 2:
        raise ValueError(f"the corpus has {corpus.data.size} bytes; an atlas needs at least 2")
    cfg = model.config
    acc = Accumulator(cfg.n_layer * cfg.n_head, cfg.context_length)
    spans = windows_of(corpus.data, cfg.context_length)
    t0 = time.perf_counter()
    bar = tqdm(total=corpus.data.size, unit="B", unit_scale=True, desc="atlas", disable=not progress)
    for i in range(0, len(spans), batch):
        group = spans[i : i + batch]
        by_length: dict[int, list[tuple[int, int]]] = {}  # the last window may be shorter: batch equal lengths
        for s, e in group:
            by_length.setdefault(e - s, []).append((s, e))
        for same in by_length.values():
            windows = torch.from_numpy(np.stack([corpus.data[s:e] for s, e in same]).astype(np.int64))
            patterns = window_patterns(model, windows)
            for (s, _), ids, pattern in zip(same, windows, patterns):
                add_window(acc, ids, s, pattern)
        bar.update(sum(e - s for s, e in group))
    bar.close()
    return finish(acc, corpus, len(spans), time.perf_counter() - t0, cfg.n_head)


def finish(acc: Accumulator, corpus: Corpus, n_windows: int, seconds: float, n_head: int) -> dict:
    """The sums as the saved atlas: per pair that occurs (sparse: P pairs), per example and per character."""
    ctx = acc.ctx
    pairs = torch.nonzero(acc.pair_count).squeeze(1)  # (P,) sorted
    counts = acc.pair_count[pairs]
    weight = acc.pair_weight[:, pairs]  # (LH, P)
    baseline = acc.distance_weight / acc.distance_count.clamp(min=1)  # (LH, ctx): the head's habit per distance
    expected = acc.pair_distance_count.view(65536, ctx)[pairs].double() @ baseline.T  # (P, LH)
    tensors = {
        "pairs": pairs.int(),
        "pair_count": counts,
        "mean_weight": (weight / counts).float(),
        "lift": (weight / expected.T.clamp(min=1e-30)).float(),
        "distance_count": acc.distance_count,
        "distance_mean": baseline.float(),
        **example_tensors(acc, corpus, pairs),
        **character_tensors(acc, baseline),
    }
    record = {
        "format": FORMAT,
        "data": corpus.sources,
        "data_sha256": corpus.sha256,
        "bytes": int(corpus.data.size),
        "windows": n_windows,
        "context_length": ctx,
        "characters": [c.decode("utf-8") for c in acc.chars],
        "detectors": {  # per head ([layer][head]), over the corpus: model/detectors.py's text scores
            name: (mass / rows if rows else mass * float("nan")).view(-1, n_head).tolist()
            for name, (mass, rows) in acc.detector_mass.items()
        },
        "seconds": round(seconds, 2),
    }
    return {"tensors": tensors, "record": record}


def example_tensors(acc: Accumulator, corpus: Corpus, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The kept examples, each with the text around its query (and around its key when that is further back)."""
    ex = acc.examples
    E, ctx, data = ex["pair"].numel(), acc.ctx, corpus.data
    text = np.zeros((E, EXAMPLE_BYTES), dtype=np.uint8)
    key_text = np.zeros((E, KEY_BYTES), dtype=np.uint8)
    starts, lengths = np.zeros(E, dtype=np.int64), np.zeros(E, dtype=np.int16)
    key_starts, key_lengths = np.zeros(E, dtype=np.int64), np.zeros(E, dtype=np.int16)
    for n, (q, k) in enumerate(zip(ex["query"].tolist(), ex["key_pos"].tolist())):
        window_start = q // ctx * ctx
        window_end = min(window_start + ctx, data.size)
        s = max(window_start, q + 1 + EXAMPLE_AFTER - EXAMPLE_BYTES)
        e = min(window_end, q + 1 + EXAMPLE_AFTER)
        text[n, : e - s], starts[n], lengths[n] = data[s:e], s, e - s
        if k < s:
            ks, ke = max(window_start, k - KEY_BYTES // 2), min(s, k + KEY_BYTES // 2)
            key_text[n, : ke - ks], key_starts[n], key_lengths[n] = data[ks:ke], ks, ke - ks
    return {
        "example_pair": torch.searchsorted(pairs, ex["pair"]).int(),  # the row in `pairs`
        "example_query": ex["query"],
        "example_key": ex["key_pos"],
        "example_weight": ex["w"].T.contiguous().float(),  # (LH, E)
        "example_text": torch.from_numpy(text),
        "example_text_start": torch.from_numpy(starts),
        "example_text_len": torch.from_numpy(lengths),
        "example_key_text": torch.from_numpy(key_text),
        "example_key_text_start": torch.from_numpy(key_starts),
        "example_key_text_len": torch.from_numpy(key_lengths),
    }


CHAR_SLOTS = (MAX_CHAR_BYTES - 1) ** 2  # slot (i - 1) * 3 + j for byte i on byte j < i of one character


def character_tensors(acc: Accumulator, baseline: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per character seen and slot (its byte i on its byte j): count, mean weight and lift, (.., Nc, 9)."""
    n_chars, n_lh = len(acc.chars), acc.n_lh
    count = torch.zeros(n_chars * CHAR_SLOTS, dtype=torch.int64)
    weight = torch.zeros(n_lh, n_chars * CHAR_SLOTS, dtype=torch.float64)
    expected = torch.zeros(n_lh, n_chars * CHAR_SLOTS, dtype=torch.float64)
    for c, i, j, w in acc.char_rows:
        slot = c * CHAR_SLOTS + (i - 1) * (MAX_CHAR_BYTES - 1) + j
        count += torch.bincount(slot, minlength=count.numel())
        weight.index_add_(1, slot, w.T)
        expected.index_add_(1, slot, baseline[:, i - j])
    return {
        "char_count": count.view(n_chars, CHAR_SLOTS),
        "char_mean": (weight / count.clamp(min=1)).float().view(n_lh, n_chars, CHAR_SLOTS),
        "char_lift": (weight / expected.clamp(min=1e-30)).float().view(n_lh, n_chars, CHAR_SLOTS),
    }


def save(folder: Path, atlas: dict, model_sha256: str) -> None:
    """atlas.safetensors and atlas.json into the checkpoint folder, atomically: both are written under temporary
    names and renamed, the JSON (which names the tensors' sha256) last; a reader checks the two belong together."""
    folder = Path(folder)
    tensors_tmp, json_tmp = folder / f".{ATLAS_TENSORS}.tmp", folder / f".{ATLAS_JSON}.tmp"
    save_file({k: v.contiguous() for k, v in atlas["tensors"].items()}, tensors_tmp)
    os.chmod(tensors_tmp, 0o644)  # readable like the checkpoint beside it
    record = {**atlas["record"], "model_sha256": model_sha256}
    record["tensors_sha256"] = hashlib.sha256(tensors_tmp.read_bytes()).hexdigest()
    json_tmp.write_text(json_file.dumps(record, indent=1, ensure_ascii=False) + "\n")
    os.replace(tensors_tmp, folder / ATLAS_TENSORS)
    os.replace(json_tmp, folder / ATLAS_JSON)
