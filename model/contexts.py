"""The same byte in different contexts: the cosine similarity of its residual stream between occurrences, per layer.

The embedding gives every occurrence of a byte the same vector (cosine 1); each layer's attention mixes in what came
before, so the occurrences drift apart. Occurrences are (text, position) pairs in one text or two; each text is run
once, reading hook_embed and every block's hook_resid_post (model/hooks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.hooks import point, run_with_cache


class OccurrenceError(ValueError):
    """Occurrences that cannot be compared; `param` names the request field at fault."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class Contexts:
    byte: int
    occurrences: list[tuple[int, int]]  # (text 0 or 1, byte position)
    stages: list[str]  # "embedding", then "layer i" for the stream leaving block i
    cosine: np.ndarray  # (n_stages, n, n): between every two occurrences
    norms: np.ndarray  # (n_stages, n)


def occurrences(
    texts: list[list[int]], positions: list[list[int] | None], byte: int | None
) -> tuple[int, list[tuple[int, int]]]:
    """The byte and its (text, position) occurrences: the positions given per text, or every position of `byte`."""
    fields = ("positions", "other_positions")
    if byte is None:
        given = [(t, p) for t, ps in enumerate(positions) for p in ps or ()]
        if not given:
            raise OccurrenceError("byte", "name the byte, or positions of it")
        t, p = given[0]
        if p >= len(texts[t]):
            raise OccurrenceError(fields[t], f"position {p} out of range: the text has {len(texts[t])} bytes")
        byte = texts[t][p]
    found = []
    for t, (ids, ps) in enumerate(zip(texts, positions)):
        for p in ps if ps is not None else [i for i, b in enumerate(ids) if b == byte]:
            if p >= len(ids):
                raise OccurrenceError(fields[t], f"position {p} out of range: the text has {len(ids)} bytes")
            if ids[p] != byte:
                raise OccurrenceError(fields[t], f"position {p} holds byte {ids[p]}, not {byte}: compare one byte")
            found.append((t, p))
    if len(found) < 2:
        raise OccurrenceError(
            "byte" if positions[0] is None else "positions",
            f"byte {byte} occurs {len(found)} time(s): a comparison needs two occurrences",
        )
    return byte, found


@torch.inference_mode()
def compare(model, texts: list[list[int]], found: list[tuple[int, int]], byte: int) -> Contexts:
    """The cosine between the occurrences' residual streams after the embedding and after every block."""
    n_layer = model.config.n_layer
    points = ["hook_embed"] + [point(i, "hook_resid_post") for i in range(n_layer)]
    caches = [run_with_cache(model, torch.tensor([ids]), points)[1] for ids in texts]
    vectors = torch.stack(
        [torch.stack([caches[t][name][0, p] for t, p in found]) for name in points]
    ).double()  # (stages, n, C)
    norms = vectors.norm(dim=-1)
    unit = vectors / norms.clamp(min=1e-30)[..., None]
    cosine = unit @ unit.transpose(1, 2)  # (stages, n, n)
    stages = ["embedding"] + [f"layer {i}" for i in range(n_layer)]
    return Contexts(byte, found, stages, cosine.numpy(), norms.numpy())
