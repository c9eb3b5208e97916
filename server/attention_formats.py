"""What POST /v1/attention can be asked (AttentionRequest) and its output formats, as a table: each format has its
own checks, an encoder (run off the event loop) and a media type, so a new format is one entry in FORMATS (the
request's `format` field takes FORMATS' keys). The route is server/routes/attention.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from model.heads import LABEL_THRESHOLD, LABELS, label_heads, summarize_heads
from model.tokenizer import tokenizer
from server.config import Settings
from server.errors import APIError
from server.schemas import AttentionResponse, ChoosesModel, HeadSummary, SwitchesHeadsOff, Text, TextChar, text_bytes


@dataclass
class Maps:
    """The chosen attention maps of one text, and what was asked for."""

    body: AttentionRequest
    model: str
    ids: list[int]
    layers: list[int]
    heads: list[int]
    chars: list[tuple[int, int]]  # the characters' byte spans
    values: torch.Tensor | None = None  # (layers, heads, N, N), or (layers, 1, N, N) averaged over heads

    @property
    def by_character(self) -> bool:
        return self.body.granularity == "character"

    @property
    def cells(self) -> int:
        n = len(self.chars) if self.by_character else len(self.ids)
        return len(self.layers) * (1 if self.body.aggregate == "mean" else len(self.heads)) * n**2

    def labels(self) -> list[str]:
        """A label per position of the maps' axes: per byte (a character on its first byte), or per character."""
        labels = tokenizer.char_labels(self.ids)
        return [labels[start] for start, _ in self.chars] if self.by_character else labels


def check_json(maps: Maps, settings: Settings) -> None:
    if maps.cells > settings.attention_max_cells:
        raise APIError(
            400,
            f"{maps.cells:,} attention cells exceed the JSON cap of {settings.attention_max_cells:,}; "
            'ask for fewer layers or heads, use aggregate: "mean", or format: "npy"',
            param="layers",
        )


def check_png(maps: Maps, settings: Settings) -> None:
    if len(maps.layers) != 1 or (len(maps.heads) != 1 and maps.body.aggregate != "mean"):
        raise APIError(
            400,
            'png shows one map: choose one layer and one head, or one layer with aggregate: "mean"',
            param="layers" if len(maps.layers) != 1 else "heads",
        )


def check_summary(maps: Maps, settings: Settings) -> None:
    if maps.by_character:
        raise APIError(
            400,
            'summary is per byte (its shares, such as "previous byte" and "same character", are defined over bytes); '
            'leave granularity "byte"',
            param="granularity",
        )


def encode_json(maps: Maps) -> bytes:
    if maps.by_character:
        tokens = [
            TextChar(ids=maps.ids[start:end], text=label, start=i, end=i + 1)
            for i, ((start, end), label) in enumerate(zip(maps.chars, maps.labels()))
        ]
    else:
        tokens = text_bytes(maps.body.text)
    answer = AttentionResponse(
        model=maps.model,
        granularity=maps.body.granularity,
        tokens=tokens,
        layers=maps.layers,
        heads=maps.heads,
        aggregate=maps.body.aggregate,
        attention=maps.values.tolist(),
    )
    return answer.model_dump_json().encode()


def encode_npy(maps: Maps) -> bytes:
    """The array as a .npy file, the same bytes np.save writes; torch casts to float16 (vectorised, unlike numpy)."""
    arr = maps.values.to(getattr(torch, maps.body.dtype)).contiguous().numpy()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(arr))
    return b"".join((header.getvalue(), arr.data))  # one copy of the data, not np.save's two


def encode_png(maps: Maps) -> bytes:
    from server.heatmap import render_png  # matplotlib loads only when a PNG is asked for

    title = f"layer {maps.layers[0]}, " + (
        f"head {maps.heads[0]}" if maps.body.aggregate == "none" else "mean of heads"
    )
    return render_png(maps.values[0, 0].numpy(), maps.labels(), title)


def encode_summary(maps: Maps) -> bytes:
    summary = summarize_heads(maps.values, maps.ids)
    answer = HeadSummary(
        model=maps.model,
        tokens=text_bytes(maps.body.text),
        layers=maps.layers,
        heads=maps.heads,
        aggregate=maps.body.aggregate,
        metrics={name: values.tolist() for name, values in summary.items()},  # NaN is sent as null
        labels=label_heads(summary),
        label_threshold=LABEL_THRESHOLD,
        label_metrics={label: metric for metric, label in LABELS},
    )
    return answer.model_dump_json().encode()


@dataclass(frozen=True)
class Format:
    media_type: str
    encode: Callable[[Maps], bytes]
    check: Callable[[Maps, Settings], None] = lambda maps, settings: None


FORMATS = {
    "json": Format("application/json", encode_json, check_json),
    "npy": Format("application/octet-stream", encode_npy),
    "png": Format("image/png", encode_png, check_png),
    "summary": Format("application/json", encode_summary, check_summary),
}


class AttentionRequest(ChoosesModel, SwitchesHeadsOff):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"text": "To be, or not to be", "layers": [0], "heads": None, "aggregate": "none", "format": "json"},
                {"text": "ROMEO:", "format": "npy", "dtype": "float16"},
                {"text": "ROMEO: what light", "layers": [2], "heads": [1], "format": "png"},
                {"text": "Grüße, 世界 🙂", "format": "summary"},
                {"text": "Grüße, 世界 🙂", "layers": [0], "heads": [0], "granularity": "character"},
                {"text": "The cat sat on the mat", "layers": [3], "heads_off": [[2, 1]], "format": "npy"},
            ]
        }
    )

    text: Text = Field(min_length=1, description="the text to analyse (its bytes are the tokens)")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="layer indices (null = all)")
    heads: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="head indices (null = all)")
    aggregate: Literal["none", "mean"] = Field("none", description="mean: average over the chosen heads")
    format: Literal[tuple(FORMATS)] = Field(  # FORMATS' keys: a format is added there alone
        "json", description="summary: what each head does (shares of attention, entropy, a label), not the maps"
    )
    dtype: Literal["float32", "float16"] = Field("float32", description="element type of the npy body")
    granularity: Literal["byte", "character"] = Field(
        "byte",
        description="character: the maps between characters (a character's row is the mean of its bytes' rows, "
        "its column the sum of its bytes' columns)",
    )
