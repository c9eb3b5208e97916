"""Whole JSON responses written by orjson, for the routes that answer per token (a generation's tokens): FastAPI's
path (validating the body against its response model, then encoding it) costs more than generating the bytes."""

from __future__ import annotations

import orjson
from fastapi.responses import Response


def json_response(body: dict) -> Response:
    """body, already in its response model's shape, field order and without nulls, as compact UTF-8 JSON (what
    FastAPI would send for it)."""
    return Response(orjson.dumps(body), media_type="application/json")
