"""The attention atlas over HTTP (model/atlas_store.py): GET /v1/atlas (a byte pair in one head, or across heads; a
head's top pairs), GET /v1/atlas/map (a head's byte × byte map, grouped), GET /v1/atlas/character (a multi-byte
character's bytes on each other) and GET /v1/atlas/binding (which heads bind characters).

The atlas is computed by `tinyllm-atlas CHECKPOINT` and read from the checkpoint folder by ServedModel.atlas
(server/models.py), once (again when its file changes); no route computes it. Without one every route is a 404
naming the command that makes it. Reading an
answer is array indexing: no model work, so it runs in the thread pool, not on the engine's thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from model.atlas_store import Atlas
from model.tokenizer import tokenizer
from server.checks import check_indices
from server.deps import QueryModelDep
from server.errors import ERROR_RESPONSES, APIError
from server.models import ServedModel
from server.responses import json_response

router = APIRouter(tags=["atlas"])


def byte_value(value: str, param: str) -> int:
    """A byte named by a one-byte character ("H", " ") or by its hex value ("0xe7"); a 400 naming param otherwise."""
    if value.lower().startswith("0x") and len(value) > 2:
        try:
            b = int(value, 16)
        except ValueError:
            b = -1
        if 0 <= b < 256:
            return b
    elif len(value.encode("utf-8")) == 1:
        return value.encode("utf-8")[0]
    raise APIError(
        400,
        f'{param} must be one byte: a one-byte character ("H") or its hex value ("0xe7"), got {value!r}',
        param=param,
    )


def head_of(served: ServedModel, layer: int | None, head: int | None) -> tuple[int, int] | None:
    if layer is None and head is None:
        return None
    if layer is None or head is None:
        raise APIError(
            400,
            "give layer and head together (or neither, for every head)",
            param="head" if layer is not None else "layer",
        )
    cfg = served.llm.config
    check_indices([layer], cfg.n_layer, "layer")
    check_indices([head], cfg.n_head, "head")
    return layer, head


HeadIndex = Annotated[int, Query(ge=0, examples=[0])]
Index = Annotated[int | None, Query(ge=0, examples=[0])]


@router.get("/v1/atlas", responses=ERROR_RESPONSES)
def atlas_pair(
    served: QueryModelDep,
    layer: Index = None,
    head: Index = None,
    query: Annotated[str | None, Query(description='the query byte: "H" or "0x48"', examples=["H"])] = None,
    key: Annotated[str | None, Query(description='the key byte: "i" or "0x69"', examples=["i"])] = None,
    top: Annotated[int, Query(ge=1, le=500, description="how many top pairs a head lists")] = 20,
    min_count: Annotated[int, Query(ge=1, description="top pairs: only pairs seen at least this often")] = 20,
):
    """How much `query` bytes attend to `key` bytes: in one head (with examples), or in every head, the highest lift
    first; with a head and no pair, the head's top pairs by lift."""
    chosen = head_of(served, layer, head)
    if (query is None) != (key is None):
        raise APIError(400, "give query and key together", param="key" if query is not None else "query")
    atlas = served.atlas()
    out = {"model": served.name, "corpus": corpus_info(atlas)}
    if query is not None:
        q, k = byte_value(query, "query"), byte_value(key, "key")
        out |= {"query": q, "key": k, "query_text": tokenizer.label(q), "key_text": tokenizer.label(k)}
        if chosen:
            out |= {"layer": chosen[0], "head": chosen[1], **atlas.pair(*chosen, q, k)}
        else:
            i = atlas.row(q, k)
            out |= {"count": 0 if i is None else int(atlas.count[i]), "heads": atlas.across_heads(q, k)}
        return out
    if not chosen:
        raise APIError(400, "name a head (layer and head), a byte pair (query and key), or both", param="query")
    return out | {"layer": chosen[0], "head": chosen[1], "top_pairs": atlas.top_pairs(*chosen, top, min_count)}


def atlas_state(served: ServedModel) -> tuple[dict | None, str | None]:
    """For GET /v1/model: the atlas's corpus and how many multi-byte characters it holds, or None and why there is
    no atlas (the command that makes one), so that a client need not ask a route that would answer 404."""
    try:
        atlas = served.atlas()
    except APIError as e:
        return None, e.message
    return {"corpus": corpus_info(atlas), "characters": len(atlas.chars)}, None


def corpus_info(atlas: Atlas) -> dict:
    r = atlas.record
    return {"bytes": r["bytes"], "windows": r["windows"], "data_sha256": r["data_sha256"], "data": r["data"]}


@router.get("/v1/atlas/map", responses=ERROR_RESPONSES)
def atlas_map(served: QueryModelDep, layer: HeadIndex, head: HeadIndex):
    """One head's query × key map: printable ASCII byte by byte, the other bytes grouped by their UTF-8 role."""
    chosen = head_of(served, layer, head)
    atlas = served.atlas()
    body = {"model": served.name, "layer": layer, "head": head, **atlas.grouped_map(*chosen)}
    return json_response(body)  # 3 × 102² cells: FastAPI's encoder is slow


@router.get("/v1/atlas/character", responses=ERROR_RESPONSES)
def atlas_character(
    served: QueryModelDep, char: Annotated[str, Query(min_length=1, description='e.g. "é"', examples=["é"])]
):
    """Per head, how much each byte of a multi-byte character attends to its earlier bytes (the same occurrence)."""
    n = len(char.encode("utf-8", errors="replace"))
    if len(char) != 1 or n < 2:
        raise APIError(400, f"char must be one character of 2 to 4 UTF-8 bytes, got {char!r}", param="char")
    atlas = served.atlas()
    found = atlas.character(char)
    if found is None:
        raise APIError(404, f"{char!r} never occurs whole in the atlas's corpus", "not_found", param="char")
    return {"model": served.name, **found}


@router.get("/v1/atlas/binding", responses=ERROR_RESPONSES)
def atlas_binding(served: QueryModelDep):
    """Per head: the weight continuation bytes give the earlier bytes of their own character, over the corpus."""
    atlas = served.atlas()
    return {"model": served.name, "corpus": corpus_info(atlas), **atlas.binding()}
