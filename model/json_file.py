"""JSON as TinyLLM writes it, in files and in HTTP responses: a number that is not finite (NaN, ±infinity) is null.

JSON has no NaN or infinity; Python's json module writes them as the bare words NaN and Infinity, which strict
readers (browsers' JSON.parse, orjson, jq, Go, Rust) refuse. A score that is undefined (a mean over no bytes) is
NaN in the arrays and null once written, and readers take null for "no value". The server's responses follow the
same rule (server/responses.py); this module is the files' side: atlas.json, training.json, metrics.jsonl.

    dumps({"score": float("nan")})   # '{"score": null}'
    loads('{"score": NaN}')          # {'score': None}: files written before this rule read the same
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """value with every non-finite float (numpy's included) replaced by None, in dicts, lists and tuples."""
    if isinstance(value, float):  # numpy.float64 is a float subclass
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # a numpy scalar or array, a tensor
        return finite(value.tolist())
    return value


def dumps(value: Any, **kwargs) -> str:
    """json.dumps of value, non-finite numbers as null; never the bare words NaN or Infinity."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def loads(text: str | bytes) -> Any:
    """json.loads, with the NaN and Infinity of older files read as None."""
    return json.loads(text, parse_constant=lambda _: None)
