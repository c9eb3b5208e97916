"""One rule for numbers that are not finite, in files and responses: null (model/json_file.py, server/responses.py)."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import orjson
import pytest
import torch

from model import json_file
from server.process import ROOT
from server.responses import JSON, json_response


def test_non_finite_numbers_are_written_as_null_wherever_they_sit():
    value = {
        "nan": float("nan"),
        "inf": [1.0, float("inf"), -math.inf],
        "numpy": np.array([[0.5, np.nan]], dtype=np.float32),
        "scalar": np.float32("nan"),
        "tensor": torch.tensor([float("nan"), 2.0]),
        "kept": [0, "NaN", None, True],
    }
    text = json_file.dumps(value)
    assert orjson.loads(text) == {
        "nan": None,
        "inf": [1.0, None, None],
        "numpy": [[0.5, None]],
        "scalar": None,
        "tensor": [None, 2.0],
        "kept": [0, "NaN", None, True],
    }


def test_files_written_before_the_rule_read_nan_as_none():
    assert json_file.loads('{"a": NaN, "b": [Infinity, -Infinity, 1.5]}') == {"a": None, "b": [None, None, 1.5]}


@pytest.mark.parametrize("respond", [lambda body: JSON(body), json_response], ids=["default class", "json_response"])
def test_responses_write_non_finite_numbers_as_null(respond):
    body = respond({"score": float("nan"), "scores": np.array([np.inf, 0.25])}).body
    assert orjson.loads(body) == {"score": None, "scores": [None, 0.25]}


def test_no_committed_json_holds_nan_or_infinity():
    """Every JSON and JSON-lines file in the repository parses as strict JSON (orjson, like a browser, refuses NaN)."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.json", "*.jsonl"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert any(name.endswith("atlas.json") for name in tracked)
    for name in tracked:
        text = (ROOT / name).read_bytes()
        documents = text.splitlines() if name.endswith(".jsonl") else [text]
        for document in filter(None, documents):
            try:
                orjson.loads(document)
            except orjson.JSONDecodeError as e:
                raise AssertionError(f"{name}: not strict JSON: {e}") from None
