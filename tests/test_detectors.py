"""Head detectors (model/detectors.py, POST /v1/detectors) on a model whose weights are set by hand: layer 0's head is a
previous-byte head, layer 1's an induction head reading what layer 0 wrote (the circuit of Elhage et al. 2021). The
detectors must find exactly that; on the bundled model, the previous-byte heads agree with the head summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import detectors
from model.config import ModelConfig
from model.model import Transformer

LETTERS = np.frombuffer(b"abcdefghijklmnop", dtype=np.uint8)  # 16 bytes with a code each in the residual stream
C, CONST = 64, 10.0  # d_model; the constant direction's size in every embedding
TOKEN, PREV = 1, 1 + 16  # residual dims: [0] constant, [1..16] the byte's code, [17..32] the previous byte's code
PREV_PAIRS = range(4)  # high-frequency rotary pairs: position
MATCH_DIMS = range(16, 32)  # low-frequency rotary pairs (angles ≤ 1e-4 a byte at rope_theta 1e8): content
SHARPNESS = 40.0 * math.sqrt(C)  # the scores are divided by √d_k (one head: d_k = C)


def rms_scale(x_sq: float) -> float:
    """RMSNorm's factor for a vector with squared norm x_sq in C dims."""
    return 1 / math.sqrt(x_sq / C + 1e-5)


def hand_set_model() -> Transformer:
    cfg = ModelConfig(context_length=64, n_layer=2, n_head=1, d_model=C, mlp_hidden=8, rope_theta=1e8)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for layer in model.layers:
            layer.input_layernorm.weight.fill_(1)
            layer.post_attention_layernorm.weight.fill_(1)
        model.norm.weight.fill_(1)
        emb = model.embed_tokens.weight
        emb[:, 0] = CONST
        for i, b in enumerate(LETTERS):
            emb[b, TOKEN + i] = 1.0
        s0 = rms_scale(CONST**2 + 1)  # a letter's embedding through layer 0's norm
        a0 = model.layers[0].self_attn
        half = C // 2
        theta = 1 / (cfg.rope_theta ** (torch.arange(0, C, 2).double() / C))
        for j in PREV_PAIRS:  # q·k = A Σ cos(θ_j (Δ − 1)): largest at Δ = 1, the previous byte
            a0.q_proj.weight[j, 0] = SHARPNESS / (CONST * s0)
            a0.k_proj.weight[j, 0] = math.cos(theta[j]) / (CONST * s0)
            a0.k_proj.weight[j + half, 0] = math.sin(theta[j]) / (CONST * s0)
        for i in range(16):  # value: the byte's code; output: into the previous-byte dims
            a0.v_proj.weight[i, TOKEN + i] = 1 / s0
            a0.o_proj.weight[PREV + i, i] = 1.0
        s1 = rms_scale(CONST**2 + 2)  # after layer 0: constant, code, previous code
        a1 = model.layers[1].self_attn
        for i in range(16):  # query: the byte's code; key: the previous byte's code; a match scores SHARPNESS
            a1.q_proj.weight[MATCH_DIMS[i], TOKEN + i] = SHARPNESS / s1
            a1.k_proj.weight[MATCH_DIMS[i], PREV + i] = 1 / s1
            a1.v_proj.weight[i, TOKEN + i] = 1 / s1  # copies the byte it reads
            a1.o_proj.weight[TOKEN + i, i] = 1.0
        for i, b in enumerate(LETTERS):
            model.lm_head.weight[b, TOKEN + i] = 1.0
    return model


@pytest.fixture(scope="module")
def model():
    return hand_set_model()


def test_the_hand_set_heads_are_found(model):
    probe = detectors.probe_scores(model, n=16, alphabet=LETTERS)
    assert probe["previous_probe"][0, 0] > 0.95 and probe["induction_probe"][0, 0] < 0.05
    assert probe["induction_probe"][1, 0] > 0.95 and probe["previous_probe"][1, 0] < 0.05
    assert detectors.induction_heads(probe) == [(1, 0)]
    copying = detectors.copying_scores(model)
    assert copying[1, 0] > 0.99  # reads a byte, raises that byte's logit


def test_text_scores_follow_transformer_lens_definitions(model):
    text = list(b"abcdefgabcdefg")
    scores = detectors.text_scores(model, [text])
    p = detectors.patterns(model, torch.tensor([text]))[0].numpy()
    T = len(text)
    # TransformerLens "mul": the mass on the pattern's cells over all the mass (T rows of 1).
    prev = sum(p[0, 0, q, q - 1] for q in range(1, T)) / T
    induction = sum(p[1, 0, q, k] for q in range(T) for k in range(1, q + 1) if text[k - 1] == text[q]) / T
    assert abs(scores["previous_byte"][0, 0] - prev) < 1e-9 and prev > 0.9
    assert abs(scores["induction"][1, 0] - induction) < 1e-9 and induction > 6 / T * 0.95


def test_the_bundled_models_previous_byte_heads_agree_with_the_head_summary():
    from model.checkpoint import load_model
    from model.heads import LABEL_THRESHOLD, label_heads, summarize_heads

    model = load_model("checkpoints/shakespeare").eval()
    text = list(b"ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.")
    T = len(text)
    scores = detectors.text_scores(model, [text])
    summary = summarize_heads(detectors.patterns(model, torch.tensor([text]))[0], text)
    # TransformerLens counts the first query (which has no previous byte), the summary does not.
    np.testing.assert_allclose(scores["previous_byte"] * T / (T - 1), summary["previous_byte"], atol=1e-9)
    labelled = {
        (y, h) for y, row in enumerate(label_heads(summary)) for h, lab in enumerate(row) if lab == "previous byte"
    }
    found = {tuple(map(int, x)) for x in np.argwhere(scores["previous_byte"] * T / (T - 1) >= LABEL_THRESHOLD)}
    assert labelled and labelled <= found


def test_the_route_names_induction_heads(server):
    import httpx

    from support import assert_envelope

    r = httpx.post(f"{server.url}/v1/detectors", json={"text": "abcabc abcabc"}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out["scores"]) == set(detectors.TEXT_SCORES) | set(detectors.PROBE_SCORES)
    assert out["corpus"] is None and "tinyllm-atlas" in out["corpus_note"]
    induction = np.array(out["scores"]["induction_probe"])
    assert out["induction_heads"] == [list(map(int, x)) for x in np.argwhere(induction >= out["induction_threshold"])]
    assert_envelope(httpx.post(f"{server.url}/v1/detectors", json={"text": "x" * 65}, timeout=60), 400, "text")


@pytest.mark.parametrize(
    "body", [{}, {"text": "ab"}, {"text": "To be, or not to be, that is the question"}], ids=["probe", "ab", "hamlet"]
)
def test_the_route_answers_on_every_bundled_model_with_its_atlas(shipped_server, body):
    """What the page's detectors panel asks, on what ships: each bundled model, with its atlas's corpus scores, whose
    undefined scores (same character on an ASCII corpus) are null, not NaN that no JSON reader accepts."""
    import httpx
    import orjson

    for model in [m["id"] for m in httpx.get(f"{shipped_server.url}/v1/models").json()["data"]]:
        r = httpx.post(f"{shipped_server.url}/v1/detectors", json={**body, "model": model}, timeout=120)
        assert r.status_code == 200, (model, r.text)
        out = orjson.loads(r.content)  # strict: NaN would raise
        assert out["model"] == model and out["corpus"] is not None, out["corpus_note"]
        assert set(out["corpus"]) == set(detectors.TEXT_SCORES)
        if model == "shakespeare":  # a pure-ASCII corpus: no byte has an earlier byte of its own character
            assert all(v is None for row in out["corpus"]["same_character"] for v in row)
