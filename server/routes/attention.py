"""POST /v1/attention: the exact attention probabilities of every chosen layer and head over a text, or a
summary of what each head does (model/heads.py); with heads_off, those of the model with some heads switched off.

Output formats are a table: each has its own checks, an encoder (run off the event loop) and a media type,
so a new format is one entry in FORMATS. With granularity "character" the maps are aggregated from bytes to
characters (model.heads.character_attention) before they are encoded.
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
from model.heads import LABEL_THRESHOLD, LABELS, character_attention, label_heads, summarize_heads
from model.tokenizer import char_spans, tokenizer
from model.trace import attention_maps, heads_off_problem
from server.config import Settings
from server.deps import ModelsDep, SettingsDep
from server.errors import ERROR_RESPONSES, APIError
from server.models import ServedModel
from server.routes.tokenize import text_bytes
from server.schemas import AttentionRequest, AttentionResponse, HeadSummary, TextChar

router = APIRouter(tags=["attention"])


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
    served = models.get(body.model)
    cfg = served.engine.config
    ids = text_ids(body.text, cfg)
    heads_off = check_heads_off(body.heads_off, cfg)
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
        values = await on_worker(served, attention_maps, served.llm.model, ids, heads_off, body.ablation)
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


def text_ids(text: str, cfg: ModelConfig) -> list[int]:
    """The text's bytes, or a 400 when they do not fit the context."""
    ids = tokenizer.encode(text)
    if len(ids) > cfg.context_length:
        raise APIError(400, f"text is {len(ids)} bytes; the context holds {cfg.context_length}", param="text")
    return ids


def check_heads_off(heads_off: list[list[int]], cfg: ModelConfig) -> list[tuple[int, int]]:
    """The [layer, head] pairs to switch off, or a 400 naming one the model does not have or one named twice."""
    pairs = [(layer, head) for layer, head in heads_off]
    if problem := heads_off_problem(cfg, pairs):
        raise APIError(400, problem, param="heads_off")
    return pairs


async def on_worker(served: ServedModel, fn: Callable, *args):
    """fn(*args) on the model's engine thread, between decode steps, as the attention maps are computed: work on the
    exact model never joins a decode batch and never touches the KV cache, so it cannot change what others get."""
    return await served.engine._call(fn, *args)  # the engine's queue of whole-text calls (Engine.attention's)


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
