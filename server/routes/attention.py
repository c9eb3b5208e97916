"""POST /v1/attention: the exact attention probabilities of every chosen layer and head over a text, or a
summary of what each head does (model/heads.py); with heads_off, those of the model with some heads switched off.

What can be asked, and the output formats (a table: each format's checks, encoder and media type), are in
server/attention_formats.py. With granularity "character" the maps are aggregated from bytes to characters
(model.heads.character_attention) before they are encoded.
"""

from __future__ import annotations

import json

import torch
from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from model.config import ModelConfig
from model.heads import character_attention
from model.tokenizer import char_spans
from server.attention_formats import FORMATS, AttentionRequest, Format, Maps
from server.checks import check_indices, checked_text
from server.deps import ModelsDep, SettingsDep
from server.errors import ERROR_RESPONSES
from server.inspection import AttentionMaps
from server.schemas import AttentionResponse, HeadSummary

router = APIRouter(tags=["attention"])


@router.post(
    "/v1/attention",
    response_model=AttentionResponse | HeadSummary,
    responses={
        **ERROR_RESPONSES,
        200: {
            "content": {f.media_type: {} for f in FORMATS.values()},
            "description": "JSON, a .npy array (layers, heads, N, N), a PNG heatmap, or the heads' summary (JSON)",
        },
    },
)
async def attention(body: AttentionRequest, models: ModelsDep, settings: SettingsDep):
    served, ids, heads_off = checked_text(body, models)
    cfg = served.engine.config
    maps = Maps(
        body,
        served.name,
        ids,
        check_indices(body.layers, cfg.n_layer, "layers"),
        check_indices(body.heads, cfg.n_head, "heads"),
        char_spans(ids),
    )
    fmt = FORMATS[body.format]
    fmt.check(maps, settings)
    if heads_off:  # the exact model with those heads' outputs replaced (model/trace.py)
        values = await served.engine.inspect(AttentionMaps(ids=ids, heads_off=heads_off, ablation=body.ablation))
    else:
        values = await served.engine.attention(ids)
    maps.values = select(values, maps, cfg)
    # Millions of floats take seconds to aggregate and encode: off the event loop, so streams keep flowing.
    content = await run_in_threadpool(encode, fmt, maps)
    axes = [maps.ids[start:end] for start, end in maps.chars] if maps.by_character else maps.ids
    headers = {
        "X-Model": served.name,
        "X-Tokens": json.dumps(axes),
        "X-Layers": ",".join(map(str, maps.layers)),
        "X-Heads": ",".join(map(str, maps.heads)),
    }
    return Response(content, media_type=fmt.media_type, headers=headers)


def encode(fmt: Format, maps: Maps) -> bytes:
    """The answer's body in fmt, the maps first aggregated to characters when asked (in a worker thread)."""
    if maps.by_character:
        maps.values = torch.from_numpy(character_attention(maps.values, maps.ids)[0]).float()
    return fmt.encode(maps)


def select(values: torch.Tensor, maps: Maps, cfg: ModelConfig) -> torch.Tensor:
    """The chosen layers and heads of all maps (L, H, T, T), averaged over heads when asked."""
    if maps.layers != list(range(cfg.n_layer)):  # indexing copies the whole array: only when a subset is asked for
        values = values[maps.layers]
    if maps.heads != list(range(cfg.n_head)):
        values = values[:, maps.heads]
    if maps.body.aggregate == "mean":
        values = values.mean(dim=1, keepdim=True)
    return values
