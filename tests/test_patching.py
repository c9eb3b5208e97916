"""Activation patching (model/patching.py, POST /v1/patch): its identities to 1e-5, the batched runs against one run
each, and the route against the same computation in process, with bad input as a 400 naming the field."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from model import checkpoint
from model.hooks import Hooks, point, run_with_cache
from model.patching import patch, patched_logits
from server.process import running_server
from support import assert_envelope, sharp_model

CLEAN = list(b"ROMEO: soft, what light? ROMEO")
CORRUPT = list(b"JULIO: soft, what light? ROMEO")  # differs in the first bytes; the same last byte


@pytest.fixture(scope="module")
def model():
    return sharp_model(seed=7)


def last_logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0][0, -1]


def test_every_position_of_a_layer_restores_the_clean_logits(model):
    clean = last_logits(model, CLEAN)
    for layer in range(model.config.n_layer):
        patched = patched_logits(model, CLEAN, CORRUPT, layer, positions=range(len(CLEAN)))
        assert (patched - clean).abs().max() < 1e-5


def test_nothing_patched_leaves_the_corrupt_logits(model):
    corrupt = last_logits(model, CORRUPT)
    for layer in range(model.config.n_layer):
        assert (patched_logits(model, CLEAN, CORRUPT, layer) - corrupt).abs().max() < 1e-5


def test_every_head_of_every_layer_restores_the_clean_logits(model):
    n = model.config.n_layer
    _, clean = run_with_cache(model, torch.tensor([CLEAN]), [point(i, "attn.hook_z") for i in range(n)])
    hooks = Hooks((point(i, "attn.hook_z"), lambda z, name: clean[name]) for i in range(n))
    with torch.inference_mode():
        patched = model(torch.tensor([CORRUPT]), hooks=hooks)[0][0, -1]
    assert (patched - last_logits(model, CLEAN)).abs().max() < 1e-5


def test_the_batched_grid_matches_one_run_per_patch(model):
    out = patch(model, CLEAN, CORRUPT)
    clean, corrupt = last_logits(model, CLEAN), last_logits(model, CORRUPT)
    assert out.target == int(clean.argmax()) and out.foil != out.target
    diff = lambda logits: float(logits[out.target] - logits[out.foil])
    assert abs(out.clean_logit_diff - diff(clean)) < 1e-5 and abs(out.corrupt_logit_diff - diff(corrupt)) < 1e-5
    span = out.clean_logit_diff - out.corrupt_logit_diff
    for layer, position in [(0, 0), (0, 4), (1, 3), (1, len(CLEAN) - 1), (1, 10)]:
        one = diff(patched_logits(model, CLEAN, CORRUPT, layer, positions=[position]))
        assert abs(out.residual_logit_diff[layer, position] - one) < 1e-5
        assert abs(out.residual[layer, position] - (one - out.corrupt_logit_diff) / span) < 1e-4
    for layer in range(2):
        for head in range(2):
            one = diff(patched_logits(model, CLEAN, CORRUPT, layer, heads=[head]))
            assert abs(out.heads_logit_diff[layer, head] - one) < 1e-5
    # Layer 0 at a position whose byte is the same in both texts: the same stream, nothing restored.
    assert out.residual[0, 10] == 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("patch") / "sharp"
    checkpoint.save(path, sharp_model(seed=7), training={"note": "random weights, sharp attention"})
    with running_server(path) as s:
        yield s


def post(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/patch", json=body, timeout=60)


def test_the_route_answers_the_same_grid(served, model):
    r = post(served, clean=bytes(CLEAN).decode(), corrupt=bytes(CORRUPT).decode(), target="O")
    assert r.status_code == 200, r.text
    out = r.json()
    local = patch(model, CLEAN, CORRUPT, target=ord("O"))
    assert out["target"] == ord("O") and out["foil"] == local.foil
    np.testing.assert_allclose(out["residual"], local.residual, atol=1e-5)
    np.testing.assert_allclose(out["heads"], local.heads, atol=1e-5)
    assert len(out["clean_tokens"]) == len(out["corrupt_tokens"]) == len(CLEAN)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"clean": "ROMEO", "corrupt": "JULIET"}, "corrupt"),
        ({"clean": "ROMEO", "corrupt": "JULIO", "target": "ab"}, "target"),
        ({"clean": "ROMEO", "corrupt": "JULIO", "foil": 256}, "foil"),
        ({"clean": "", "corrupt": ""}, "clean"),
        ({"clean": "x" * 65, "corrupt": "y" * 65}, "clean"),
        ({"clean": "ROMEO", "corrupt": "JULIO", "model": "nope"}, "model"),
    ],
)
def test_bad_input_names_the_field(served, body, param):
    assert_envelope(post(served, **body), 404 if param == "model" else 400, param)
