"""POST /v1/attention's head summary (format "summary") and character view (granularity "character"), in
process against a tiny random checkpoint with sharp attention.

The served numbers are checked against model/heads.py run on TinyLLM.attention() of the same text (which
tests/test_heads.py checks against explicit loops), and bad input against the error envelope.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from model import TinyLLM, checkpoint
from model.heads import LABEL_THRESHOLD, LABELS, METRICS, character_attention, label_heads, summarize_heads
from support import assert_envelope, sharp_model

TEXT = "Grüße, мир 世界 🙂 ok"  # 1-, 2-, 3- and 4-byte characters, spaces between words
CHARS = list(TEXT)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("views") / "sharp"
    checkpoint.save(path, sharp_model(seed=3), training={"note": "random weights, sharp attention"})
    return path


@pytest.fixture(scope="module")
def client(app_client, ckpt):
    with app_client(ckpt, attention_max_cells=10_000) as c:
        yield c


@pytest.fixture(scope="module")
def maps(ckpt):
    """Every layer's and head's attention over TEXT, from the Python API: (L, H, T, T)."""
    return TinyLLM.load(ckpt, device="cpu", dtype="float32").attention(TEXT)


def post(client, **body):
    r = client.post("/v1/attention", json={"text": TEXT, **body})
    assert r.status_code == 200, r.text
    return r


def as_float(values) -> np.ndarray:
    return np.array([[math.nan if v is None else v for v in row] for row in values])


# ------------------------------------------------------------------ summary


def test_summary_is_model_heads_on_the_same_attention(client, maps):
    out = post(client, format="summary").json()
    ids = list(TEXT.encode())
    want = summarize_heads(maps, ids)
    assert out["model"] == "sharp" and out["layers"] == [0, 1] and out["heads"] == [0, 1]
    assert [t["id"] for t in out["tokens"]] == ids
    assert set(out["metrics"]) == set(METRICS)
    for name in METRICS:
        np.testing.assert_allclose(as_float(out["metrics"][name]), want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    assert out["labels"] == label_heads(want)
    assert out["label_threshold"] == LABEL_THRESHOLD
    assert out["label_metrics"] == {label: metric for metric, label in LABELS}
    shares = np.stack([as_float(out["metrics"][m]) for m in METRICS if m not in ("mean_distance", "entropy_bits")])
    assert np.all((shares >= 0) & (shares <= 1 + 1e-6)), "shares of attention lie in [0, 1]"


def test_summary_of_chosen_heads_and_of_their_mean(client, maps):
    ids = list(TEXT.encode())
    out = post(client, format="summary", layers=[1], heads=[1, 0]).json()
    want = summarize_heads(maps[[1]][:, [1, 0]], ids)
    np.testing.assert_allclose(as_float(out["metrics"]["previous_byte"]), want["previous_byte"], atol=1e-6)
    mean = post(client, format="summary", layers=[0], aggregate="mean").json()
    want = summarize_heads(maps[[0]].mean(dim=1, keepdim=True), ids)
    np.testing.assert_allclose(as_float(mean["metrics"]["entropy_bits"]), want["entropy_bits"], atol=1e-5)


def test_summary_of_ascii_text_has_no_same_character_share(client):
    out = post(client, text="plain ascii", format="summary").json()
    assert out["metrics"]["same_character"] == [[None, None], [None, None]], "no byte continues a character"


def test_summary_bad_input_is_a_clear_400(client):
    r = client.post("/v1/attention", json={"text": TEXT, "format": "summary", "granularity": "character"})
    assert "per byte" in assert_envelope(r, 400, "granularity")["message"]
    r = client.post("/v1/attention", json={"text": TEXT, "format": "summary", "layers": [5]})
    assert "0..1" in assert_envelope(r, 400, "layers")["message"]
    r = client.post("/v1/attention", json={"text": "x" * 65, "format": "summary"})
    assert "context" in assert_envelope(r, 400, "text")["message"]
    assert_envelope(client.post("/v1/attention", json={"text": TEXT, "format": "table"}), 400, "format")
    assert_envelope(client.post("/v1/attention", json={"text": "", "format": "summary"}), 400, "text")


# ------------------------------------------------------------------ character view


def test_character_json_is_model_heads_aggregation(client, maps):
    out = post(client, granularity="character").json()
    ids = list(TEXT.encode())
    want, spans = character_attention(maps, ids)
    assert out["granularity"] == "character"
    assert [t["text"] for t in out["tokens"]] == CHARS
    assert [t["ids"] for t in out["tokens"]] == [list(c.encode()) for c in CHARS]
    assert [(t["start"], t["end"]) for t in out["tokens"]] == [(i, i + 1) for i in range(len(CHARS))]
    got = np.array(out["attention"])
    assert got.shape == (2, 2, len(CHARS), len(CHARS))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1, atol=1e-5, err_msg="a character's row still sums to 1")
    assert np.all(np.triu(got, 1) == 0), "no character attends to a later one"


def test_character_npy_and_headers(client, maps):
    r = post(client, granularity="character", format="npy", layers=[1], heads=[0], dtype="float16")
    arr = np.load(io.BytesIO(r.content))
    assert arr.shape == (1, 1, len(CHARS), len(CHARS)) and arr.dtype == np.float16
    want, _ = character_attention(maps[[1]][:, [0]], list(TEXT.encode()))
    np.testing.assert_allclose(arr.astype(np.float64), want, atol=1e-3)
    assert json.loads(r.headers["x-tokens"]) == [list(c.encode()) for c in CHARS]
    assert r.headers["x-model"] == "sharp"
    byte_view = post(client, format="npy", layers=[1], heads=[0])
    assert json.loads(byte_view.headers["x-tokens"]) == list(TEXT.encode())


def test_character_png_has_fewer_rows_than_the_byte_png(client):
    from PIL import Image

    body = {"format": "png", "layers": [0], "aggregate": "mean"}
    chars = Image.open(io.BytesIO(post(client, granularity="character", **body).content))
    bytes_ = Image.open(io.BytesIO(post(client, **body).content))
    assert chars.format == bytes_.format == "PNG"
    assert chars.size != bytes_.size, "one row and column per character, not per byte"


def test_character_json_cap_counts_characters(client):
    # 2 layers x 2 heads x 64² bytes is over the 10,000-cell cap; the same text's 16 characters are not
    text = "🙂" * 16
    assert_envelope(client.post("/v1/attention", json={"text": text}), 400, "layers")
    assert len(post(client, text=text, granularity="character").json()["tokens"]) == 16


def test_unknown_granularity_is_a_400(client):
    assert_envelope(client.post("/v1/attention", json={"text": TEXT, "granularity": "word"}), 400, "granularity")
