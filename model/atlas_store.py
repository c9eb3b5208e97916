"""Reading an attention atlas (computed and written by model/atlas.py): one byte pair in one head, the same pair across
heads, a head's top pairs, a head's byte × byte map grouped for display, and the multi-byte characters' binding.

    a = Atlas.load("checkpoints/shakespeare")       # AtlasMissing (with the command that makes it) when there is none
    a.pair(0, 3, ord("H"), ord("i"))                # count, mean weight, lift, examples
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from model import json_file
from model.atlas import ATLAS_JSON, ATLAS_TENSORS, CHAR_SLOTS, FORMAT, MAX_CHAR_BYTES
from model.tokenizer import tokenizer

# The byte groups of the map: printable ASCII one by one, then the other bytes by their UTF-8 role.
GROUPS = [(chr(b), [b]) for b in range(0x20, 0x7F)] + [
    ("\\n", [0x0A]),
    ("other control", [b for b in range(0x20) if b != 0x0A] + [0x7F]),
    ("continuation 80–BF", list(range(0x80, 0xC0))),
    ("2-byte lead C2–DF", list(range(0xC2, 0xE0))),
    ("3-byte lead E0–EF", list(range(0xE0, 0xF0))),
    ("4-byte lead F0–F4", list(range(0xF0, 0xF5))),
    ("never in UTF-8", [0xC0, 0xC1, *range(0xF5, 0x100)]),
]


class AtlasMissing(Exception):
    """No usable atlas next to the checkpoint; the message names the command that makes one."""


def make_command(folder) -> str:
    return f"tinyllm-atlas {folder}  (or: python -m model.atlas_cli {folder} --data FILE ...)"


class Atlas:
    def __init__(self, tensors: dict[str, np.ndarray], record: dict, n_layer: int, n_head: int):
        self.t, self.record = tensors, record
        self.n_layer, self.n_head = n_layer, n_head
        shape = (n_layer, n_head)
        self.pairs = tensors["pairs"].astype(np.int64)
        self.count = tensors["pair_count"]
        self.mean = tensors["mean_weight"].reshape(*shape, -1)  # (L, H, P)
        self.lift = tensors["lift"].reshape(*shape, -1)
        self.example_weight = tensors["example_weight"].reshape(*shape, -1)  # (L, H, E)
        self.examples_of: dict[int, list[int]] = {}
        for e, row in enumerate(tensors["example_pair"].tolist()):
            self.examples_of.setdefault(row, []).append(e)
        self.chars = {c: n for n, c in enumerate(record["characters"])}
        self.maps: dict[tuple[int, int], dict] = {}
        self.char_mean = tensors["char_mean"].reshape(*shape, len(self.chars), CHAR_SLOTS)
        self.char_lift = tensors["char_lift"].reshape(*shape, len(self.chars), CHAR_SLOTS)

    @classmethod
    def load(cls, folder, n_layer: int, n_head: int, model_sha256: str | None = None) -> Atlas:
        folder = Path(folder)
        tensors_path, json_path = folder / ATLAS_TENSORS, folder / ATLAS_JSON
        if not json_path.is_file() or not tensors_path.is_file():
            raise AtlasMissing(
                f"no attention atlas next to the checkpoint {folder}; make it with: {make_command(folder)}"
            )
        try:
            record = json_file.loads(json_path.read_text())  # older files: NaN as None
        except ValueError:
            record = None
        if not isinstance(record, dict):  # not JSON, or cut short: as unusable as an atlas of another version
            record = {}
        raw = tensors_path.read_bytes()
        if record.get("format") != FORMAT or hashlib.sha256(raw).hexdigest() != record.get("tensors_sha256"):
            raise AtlasMissing(
                f"the atlas in {folder} is incomplete or of another version; remake it: {make_command(folder)}"
            )
        if model_sha256 and record.get("model_sha256") != model_sha256:
            raise AtlasMissing(f"the atlas in {folder} was made for other weights; remake it: {make_command(folder)}")
        return cls(load_file(tensors_path), record, n_layer, n_head)

    @classmethod
    def from_computed(cls, atlas: dict, n_layer: int, n_head: int) -> Atlas:
        """An atlas just computed (model.atlas.compute), without saving it."""
        return cls({k: v.numpy() for k, v in atlas["tensors"].items()}, atlas["record"], n_layer, n_head)

    def row(self, query: int, key: int) -> int | None:
        """The pair's row in the arrays, or None when it never occurs in the corpus."""
        pair = query * 256 + key
        i = int(np.searchsorted(self.pairs, pair))
        return i if i < self.pairs.size and self.pairs[i] == pair else None

    def pair(self, layer: int, head: int, query: int, key: int) -> dict:
        """How much `query` bytes attend to `key` bytes in one head, over the corpus, with examples."""
        i = self.row(query, key)
        if i is None:
            return {"count": 0, "mean_weight": None, "lift": None, "examples": []}
        return {
            "count": int(self.count[i]),
            "mean_weight": float(self.mean[layer, head, i]),
            "lift": float(self.lift[layer, head, i]),
            "examples": [self.example(e, layer, head) for e in self.examples_of.get(i, [])],
        }

    def example(self, e: int, layer: int, head: int) -> dict:
        t = self.t
        start, length = int(t["example_text_start"][e]), int(t["example_text_len"][e])
        query, key = int(t["example_query"][e]), int(t["example_key"][e])
        out = {
            "query_position": query,
            "key_position": key,
            "distance": query - key,
            "weight": float(self.example_weight[layer, head, e]),
            "text_start": start,
            "text": bytes(t["example_text"][e, :length]).decode("utf-8", errors="replace"),
            "text_bytes": t["example_text"][e, :length].tolist(),
        }
        if key < start:
            ks, kl = int(t["example_key_text_start"][e]), int(t["example_key_text_len"][e])
            out["key_text_start"] = ks
            out["key_text_bytes"] = t["example_key_text"][e, :kl].tolist()
        return out

    def across_heads(self, query: int, key: int) -> list[dict]:
        """The pair in every head, the highest lift first: where does this happen most."""
        i = self.row(query, key)
        if i is None:
            return []
        heads = [
            {"layer": y, "head": h, "mean_weight": float(self.mean[y, h, i]), "lift": float(self.lift[y, h, i])}
            for y in range(self.n_layer)
            for h in range(self.n_head)
        ]
        return sorted(heads, key=lambda x: -x["lift"])

    def top_pairs(self, layer: int, head: int, n: int = 20, min_count: int = 20, by: str = "lift") -> list[dict]:
        """The head's pairs with the highest lift (or mean weight) among those seen at least min_count times."""
        values = (self.lift if by == "lift" else self.mean)[layer, head]
        candidates = np.nonzero(self.count >= min_count)[0]
        best = candidates[np.argsort(-values[candidates], kind="stable")[:n]]
        return [
            {
                "query": int(self.pairs[i] // 256),
                "key": int(self.pairs[i] % 256),
                "query_text": tokenizer.label(int(self.pairs[i] // 256)),
                "key_text": tokenizer.label(int(self.pairs[i] % 256)),
                "count": int(self.count[i]),
                "mean_weight": float(self.mean[layer, head, i]),
                "lift": float(self.lift[layer, head, i]),
            }
            for i in best
        ]

    def grouped_map(self, layer: int, head: int) -> dict:
        """The head's query × key map over GROUPS: per cell the count-weighted mean weight, the lift (summed weight
        over summed expectation) and the count; null where the cells' pairs never occur. Kept once made."""
        if (layer, head) not in self.maps:
            self.maps[layer, head] = self.make_grouped_map(layer, head)
        return self.maps[layer, head]

    def make_grouped_map(self, layer: int, head: int) -> dict:
        group_of = np.zeros(256, dtype=np.int64)
        for g, (_, members) in enumerate(GROUPS):
            group_of[members] = g
        G = len(GROUPS)
        cell = group_of[self.pairs // 256] * G + group_of[self.pairs % 256]
        weight = self.mean[layer, head] * self.count
        expected = np.where(self.lift[layer, head] > 0, weight / np.maximum(self.lift[layer, head], 1e-30), 0.0)
        count = np.bincount(cell, weights=self.count, minlength=G * G)
        w = np.bincount(cell, weights=weight, minlength=G * G)
        x = np.bincount(cell, weights=expected, minlength=G * G)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean, lift = np.where(count > 0, w / count, np.nan), np.where(x > 0, w / x, np.nan)
        as_list = lambda a: [[None if np.isnan(v) else round(float(v), 6) for v in r] for r in a.reshape(G, G)]
        return {
            "groups": [name for name, _ in GROUPS],
            "group_bytes": [members for _, members in GROUPS],
            "mean_weight": as_list(mean),
            "lift": as_list(lift),
            "count": count.reshape(G, G).astype(np.int64).tolist(),
        }

    def character(self, char: str) -> dict | None:
        """Per head, how much each byte of `char` attends to its earlier bytes (same occurrence)."""
        c = self.chars.get(char)
        if c is None:
            return None
        n = len(char.encode())
        slots = [(i, j, (i - 1) * (MAX_CHAR_BYTES - 1) + j) for i in range(1, n) for j in range(i)]
        count = self.t["char_count"][c]
        return {
            "character": char,
            "bytes": list(char.encode()),
            "count": int(count[slots[0][2]]),
            "pairs": [
                {
                    "query_byte": i,
                    "key_byte": j,
                    "mean_weight": self.char_mean[:, :, c, s].tolist(),  # [layer][head]
                    "lift": self.char_lift[:, :, c, s].tolist(),
                }
                for i, j, s in slots
            ],
        }

    def binding(self) -> dict:
        """Per head, over every multi-byte character: the mean weight a continuation byte gives the earlier bytes of
        its own character (summed over them; null without any), and the characters seen most."""
        count = self.t["char_count"]  # (Nc, slots)
        queries = count[:, [(i - 1) * (MAX_CHAR_BYTES - 1) for i in range(1, MAX_CHAR_BYTES)]].sum()
        weight = (self.char_mean * count).sum(axis=(-1, -2))  # (L, H)
        names = self.record["characters"]
        seen = np.argsort(-count[:, 0], kind="stable")[:30]
        return {
            "continuation_bytes": int(queries),
            # a corpus without multi-byte characters has no binding to measure: null, not a weight of 0
            "binding": (weight / queries).tolist() if queries else [[None] * self.n_head for _ in range(self.n_layer)],
            "characters": [{"character": names[c], "count": int(count[c, 0])} for c in seen if count[c, 0] > 0],
        }
