"""The same byte in different contexts (model/contexts.py, POST /v1/contexts): identical after the embedding, apart
after attention; the cosines against a direct computation; bad input as a 400 naming the field."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from model.contexts import compare, occurrences
from model.hooks import point, run_with_cache
from support import assert_envelope, sharp_model

TEXT = list(b"the cat ate the eel")


def test_the_embedding_makes_occurrences_identical_and_attention_makes_them_differ():
    model = sharp_model(seed=7)
    byte, found = occurrences([TEXT], [None], ord("e"))
    assert byte == ord("e") and found == [(0, p) for p, b in enumerate(TEXT) if b == ord("e")]
    out = compare(model, [TEXT], found, byte)
    assert out.stages == ["embedding", "layer 0", "layer 1"]
    np.testing.assert_allclose(out.cosine[0], 1, atol=1e-6)
    assert out.cosine[1:].min() < 0.999
    _, cache = run_with_cache(model, torch.tensor([TEXT]), [point(1, "hook_resid_post")])
    a, b = cache[point(1, "hook_resid_post")][0, found[0][1]], cache[point(1, "hook_resid_post")][0, found[1][1]]
    assert abs(out.cosine[2, 0, 1] - float(torch.nn.functional.cosine_similarity(a, b, dim=0))) < 1e-5


def post(server, **body):
    return httpx.post(f"{server.url}/v1/contexts", json=body, timeout=60)


def test_two_texts_over_http(server):
    r = post(server, text="the", other_text="eat", positions=[2], other_positions=[0])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["byte"] == ord("e") and out["occurrences"] == [{"text": 0, "position": 2}, {"text": 1, "position": 0}]
    assert len(out["cosine"]) == len(out["stages"]) and abs(out["cosine"][0][0][1] - 1) < 1e-6


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": "the cat"}, "byte"),
        ({"text": "the cat", "byte": "e"}, "byte"),
        ({"text": "the cat", "positions": [0, 4]}, "positions"),
        ({"text": "the cat", "positions": [0, 40]}, "positions"),
        ({"text": "the", "other_text": "eat", "positions": [2], "other_positions": [1]}, "other_positions"),
        ({"text": "the eel", "byte": "ab"}, "byte"),
        ({"text": "the eel", "other_positions": [1]}, "other_positions"),
        ({"text": "x" * 65, "byte": "x"}, "text"),
    ],
)
def test_bad_input_names_the_field(server, body, param):
    assert_envelope(post(server, **body), 400, param)
