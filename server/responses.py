"""Every JSON body the server writes, by orjson: compact UTF-8, numpy arrays and scalars as lists and numbers, and
a number that is not finite (NaN, ±infinity) as null (model/json_file.py's rule: JSON has no NaN).

JSON is the app's default response class, so a route that returns a dict is written here; response models are
written by pydantic, whose JSON also writes non-finite floats as null. json_response is for routes that build their
body themselves: FastAPI's path (validating the body against its response model, then encoding it) costs more than
generating a generation's bytes, and more than reading a map out of the atlas.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse, Response

OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class JSON(JSONResponse):
    """The app's default response class."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def dumps(content: Any) -> bytes:
    """orjson's JSON of content; objects it does not know (a dataclass-like model built without validation) go by
    their fields."""
    return orjson.dumps(content, default=vars, option=OPTIONS)


def json_response(body: Any, status_code: int = 200) -> Response:
    """body, already in its response model's shape and field order, as the JSON FastAPI would send for it."""
    return Response(dumps(body), status_code=status_code, media_type="application/json")
