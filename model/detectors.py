"""Head detectors: per layer and head, a score for each kind of head, with TransformerLens's definitions where they
exist (transformer_lens.head_detector), read from the probabilities at every layer's attn.hook_pattern.

On a text (or a corpus, window by window, each window weighing its bytes):

- previous_byte, duplicate_byte, induction: TransformerLens's detection patterns and its "mul" score, the attention
  mass on the pattern's cells over all the mass (each query row has mass 1, so: the mean over every query, the first
  included, of its mass on the cells). previous: key q − 1; duplicate: an earlier key with the query's byte;
  induction: a key whose previous byte is the query's byte (the byte after an earlier copy of the current one).
- same_character, same_word, start_of_text: model/heads.py's shares (over the queries that have such keys).

On a probe (TransformerLens's induction test): a random sequence of n bytes (letters, seeded) repeated once; over the
second copy's queries, the mean weight on the byte after the earlier copy of the current byte (induction_probe) and
on that copy itself (duplicate_probe), and previous_probe on the byte before.

copying: the OV circuit's copying score (Elhage et al. 2021): the eigenvalues λ of the head's byte-to-logit map
restricted to printable ASCII and newline, E·W_V,hᵀ·W_O,hᵀ·diag(g)·W_Uᵀ (E: the embeddings through the layer's input
norm; g: the final norm's weight), as Σλ / Σ|λ|: 1 when the head copies the byte it reads into the prediction.

A head is an induction head here when induction_probe ≥ INDUCTION_THRESHOLD.
"""

from __future__ import annotations

import numpy as np
import torch

from model.heads import char_of_byte, word_of_byte
from model.hooks import Hooks, point, record
from model.tokenizer import char_spans

INDUCTION_THRESHOLD = 0.4
PROBE_BYTES = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
COPY_BYTES = [0x0A, *range(0x20, 0x7F)]
TEXT_SCORES = ("previous_byte", "duplicate_byte", "induction", "same_character", "same_word", "start_of_text")
PROBE_SCORES = ("induction_probe", "duplicate_probe", "previous_probe", "copying")


@torch.inference_mode()
def patterns(model, ids: torch.Tensor) -> torch.Tensor:
    """Every layer's probabilities over a batch (B, T): (B, n_layer, n_head, T, T), float64."""
    kept: dict[str, torch.Tensor] = {}
    n = model.config.n_layer
    ids = ids.to(model.embed_tokens.weight.device)
    model(ids, hooks=Hooks((point(i, "attn.hook_pattern"), record(kept, lambda p: p.float().cpu())) for i in range(n)))
    return torch.stack([kept[point(i, "attn.hook_pattern")] for i in range(n)], dim=1).double()


def detection_patterns(ids: list[int]) -> dict[str, np.ndarray]:
    """TransformerLens's detection patterns (T, T) for previous, duplicate and induction, and heads.py's masks."""
    a = np.asarray(ids)
    T = a.size
    earlier = np.tri(T, k=-1, dtype=bool)  # key before query
    duplicate = earlier & (a[:, None] == a[None, :])
    induction = np.zeros((T, T), dtype=bool)
    induction[:, 1:] = duplicate[:, :-1]  # key k when byte k − 1 is an earlier copy of the query's byte
    chars, words = char_of_byte(char_spans(list(ids))), word_of_byte(ids)
    return {
        "previous_byte": np.eye(T, k=-1, dtype=bool),
        "duplicate_byte": duplicate,
        "induction": induction,
        "same_character": earlier & (chars[:, None] == chars[None, :]),
        "same_word": earlier & (words[:, None] == words[None, :]) & (words[:, None] >= 0),
        "start_of_text": first_key(T),
    }


def first_key(T: int) -> np.ndarray:
    cells = np.zeros((T, T), dtype=bool)
    cells[1:, 0] = True  # every query but the first (which has no other key)
    return cells


def text_sums(pattern, ids: list[int]) -> dict[str, tuple]:
    """Per score: the matched mass summed over the queries that count (..., for the pattern's leading dims (L, H) or
    (LH,)), and how many queries count. pattern: a numpy array or a torch tensor (..., T, T)."""
    out = {}
    for name, cells in detection_patterns(ids).items():
        if name in ("same_character", "same_word", "start_of_text"):
            rows = cells.any(-1)  # heads.py: over the queries that have such keys (start: every query but the first)
        else:
            rows = np.ones(len(ids), dtype=bool)  # TransformerLens: the whole pattern's mass
        if isinstance(pattern, torch.Tensor):
            cells, rows = torch.from_numpy(cells), torch.from_numpy(rows)
        mass = (pattern * cells).sum(-1)  # (..., T)
        total = mass[..., rows].sum(-1)
        out[name] = (total.double() if isinstance(total, torch.Tensor) else total, float(rows.sum()))
    return out


def text_scores(model, texts: list[list[int]]) -> dict[str, np.ndarray]:
    """The text scores (n_layer, n_head) over some texts, each query counted once (NaN where none counts)."""
    totals: dict[str, list] = {}
    for ids in texts:
        pattern = patterns(model, torch.tensor([ids]))[0].numpy()
        for name, (mass, rows) in text_sums(pattern, ids).items():
            kept = totals.setdefault(name, [0.0, 0.0])
            kept[0], kept[1] = kept[0] + mass, kept[1] + rows
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: np.asarray(mass / rows if rows else mass * np.nan) for name, (mass, rows) in totals.items()}


def probe(n: int, batch: int = 4, seed: int = 0, alphabet: np.ndarray = PROBE_BYTES) -> torch.Tensor:
    """`batch` random sequences of n letters (all different when n allows), each repeated once: (batch, 2n)."""
    rng = np.random.default_rng(seed)
    first = np.stack([rng.choice(alphabet, size=n, replace=n > alphabet.size) for _ in range(batch)])
    return torch.from_numpy(np.concatenate([first, first], axis=1).astype(np.int64))


def probe_scores(
    model, n: int | None = None, batch: int = 4, seed: int = 0, alphabet: np.ndarray = PROBE_BYTES
) -> dict[str, np.ndarray]:
    """induction_probe, duplicate_probe and previous_probe (n_layer, n_head) on repeated random sequences."""
    n = n or min(64, model.config.context_length // 2)
    p = patterns(model, probe(n, batch, seed, alphabet)).mean(0)  # (L, H, 2n, 2n)
    q = torch.arange(n, 2 * n)  # the second copy's queries
    return {
        "induction_probe": p[..., q, q - n + 1].mean(-1).numpy(),
        "duplicate_probe": p[..., q, q - n].mean(-1).numpy(),
        "previous_probe": p[..., q, q - 1].mean(-1).numpy(),
    }


@torch.inference_mode()
def copying_scores(model) -> np.ndarray:
    """The OV circuit's copying score per head (see the module doc): (n_layer, n_head)."""
    cfg = model.config
    nh, hs = cfg.n_head, cfg.head_dim
    emb = model.embed_tokens.weight[COPY_BYTES].double()  # (V', C)
    unembed = model.lm_head.weight[COPY_BYTES].double() * model.norm.weight.double()  # (V', C): W_U·diag(g)
    scores = np.zeros((cfg.n_layer, nh))
    for layer, block in enumerate(model.layers):
        x = block.input_layernorm(emb.float()).double()  # the embeddings as the layer's attention reads them
        w_v = block.self_attn.v_proj.weight.double().view(nh, hs, -1)  # (nh, hs, C)
        w_o = block.self_attn.o_proj.weight.double().view(-1, nh, hs)  # (C, nh, hs)
        for head in range(nh):
            ov = x @ w_v[head].T @ w_o[:, head].T @ unembed.T  # (V', V'): byte read -> logit written
            eig = torch.linalg.eigvals(ov)
            scores[layer, head] = float(eig.real.sum() / eig.abs().sum())
    return scores


def detect(model, texts: list[list[int]] = ()) -> dict[str, np.ndarray]:
    """Every score per head: the text scores over `texts` (none when empty), the probe's and the copying score."""
    out = text_scores(model, list(texts)) if texts else {}
    return {**out, **probe_scores(model), "copying": copying_scores(model)}


def induction_heads(scores: dict[str, np.ndarray], threshold: float = INDUCTION_THRESHOLD) -> list[tuple[int, int]]:
    """The (layer, head) pairs whose probe induction score reaches the threshold."""
    return [tuple(map(int, lh)) for lh in np.argwhere(scores["induction_probe"] >= threshold)]
