"""POST /v1/attention: the exact attention probabilities of every chosen layer and head over a text.

Output formats are a table: each has its own checks, an encoder (run off the event loop) and a media type,
so a new format is one entry in FORMATS.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from model.config import ModelConfig
from model.tokenizer import tokenizer
from server.config import Settings
from server.deps import EngineDep, SettingsDep
from server.errors import ERROR_RESPONSES, APIError
from server.routes.tokenize import text_bytes
from server.schemas import AttentionRequest, AttentionResponse

router = APIRouter(tags=["attention"])


@dataclass
class Maps:
    """The chosen attention maps of one text, and what was asked for."""

    body: AttentionRequest
    ids: list[int]
    layers: list[int]
    heads: list[int]
    values: torch.Tensor | None = None  # (layers, heads, T, T), or (layers, 1, T, T) averaged over heads

    @property
    def cells(self) -> int:
        return len(self.layers) * (1 if self.body.aggregate == "mean" else len(self.heads)) * len(self.ids) ** 2


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


def encode_json(maps: Maps) -> bytes:
    answer = AttentionResponse(
        tokens=text_bytes(maps.body.text),
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
    return render_png(maps.values[0, 0].numpy(), tokenizer.char_labels(maps.ids), title)


@dataclass(frozen=True)
class Format:
    media_type: str
    encode: Callable[[Maps], bytes]
    check: Callable[[Maps, Settings], None] = lambda maps, settings: None


FORMATS = {
    "json": Format("application/json", encode_json, check_json),
    "npy": Format("application/octet-stream", encode_npy),
    "png": Format("image/png", encode_png, check_png),
}


@router.post(
    "/v1/attention",
    response_model=AttentionResponse,
    responses={
        **ERROR_RESPONSES,
        200: {
            "content": {f.media_type: {} for f in FORMATS.values()},
            "description": "JSON, a .npy array (layers, heads, T, T), or a PNG heatmap",
        },
    },
)
async def attention(body: AttentionRequest, engine: EngineDep, settings: SettingsDep):
    cfg = engine.config
    ids = tokenizer.encode(body.text)
    if len(ids) > cfg.context_length:
        raise APIError(400, f"text is {len(ids)} bytes; the context holds {cfg.context_length}", param="text")
    maps = Maps(
        body, ids, check_indices(body.layers, cfg.n_layer, "layers"), check_indices(body.heads, cfg.n_head, "heads")
    )
    fmt = FORMATS[body.format]
    fmt.check(maps, settings)
    maps.values = select(await engine.attention(ids), maps, cfg)
    # Millions of floats take seconds to encode: off the event loop, so streams keep flowing meanwhile.
    content = await run_in_threadpool(fmt.encode, maps)
    headers = {
        "X-Tokens": json.dumps(ids),
        "X-Layers": ",".join(map(str, maps.layers)),
        "X-Heads": ",".join(map(str, maps.heads)),
    }
    return Response(content, media_type=fmt.media_type, headers=headers)


def select(values: torch.Tensor, maps: Maps, cfg: ModelConfig) -> torch.Tensor:
    """The chosen layers and heads of all maps (L, H, T, T), averaged over heads when asked."""
    if maps.layers != list(range(cfg.n_layer)):  # indexing copies the whole array: only when a subset is asked for
        values = values[maps.layers]
    if maps.heads != list(range(cfg.n_head)):
        values = values[:, maps.heads]
    if maps.body.aggregate == "mean":
        values = values.mean(dim=1, keepdim=True)
    return values


def check_indices(chosen: list[int] | None, n: int, param: str) -> list[int]:
    """Layer or head indices: all of them for None, else the chosen ones, each checked against n."""
    if chosen is None:
        return list(range(n))
    if not chosen:
        raise APIError(400, f"{param} is empty; leave it null for all", param=param)
    bad = [i for i in chosen if i >= n]
    if bad:
        raise APIError(400, f"{param} {bad} out of range: valid indices are 0..{n - 1}", param=param)
    return chosen
