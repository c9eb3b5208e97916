"""POST /v1/attention and attention while generating, in-process against a tiny random checkpoint.

The correctness test recomputes attention from the saved safetensors with numpy alone (RMSNorm, Q and K,
rotate-half RoPE, the scaled and causally masked softmax, and for deeper layers the whole residual stream
before them) and compares it with what the endpoint serves.
"""

from __future__ import annotations

import io
import json
import struct
import warnings

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from model import checkpoint
from model.config import ModelConfig
from model.model import Transformer
from server.heatmap import drawable_labels, render_png

CONFIG = ModelConfig(context_length=64, n_layer=3, n_head=2, d_model=32, mlp_hidden=64)
JSON_CAP = 20_000  # low, so the tiny model can reach it: 3 layers x 2 heads x 58² > 20,000
TEXT = "Hé, attention ☃ at work!"  # multi-byte characters: 2- and 3-byte UTF-8
PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 3-layer random model (a layer 2 needs two layers before it) with sharp attention and ASCII output.

    Q and K weights are scaled up so the maps are far from uniform (at the usual 0.02 init every row is
    nearly flat, and a wrong RoPE or scale would hide in it). The lm_head rows of bytes >= 0x80 are zero, so
    their logits are 0 and greedy decoding picks an ASCII byte (the largest of 128 random logits is positive):
    the generated text is valid UTF-8 and can be sent back to /v1/attention as text.
    """
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    with torch.no_grad():
        for block in model.layers:
            block.self_attn.q_proj.weight *= 8
            block.self_attn.k_proj.weight *= 8
        model.lm_head.weight[0x80:] = 0
    path = tmp_path_factory.mktemp("attention") / "tiny3"
    checkpoint.save(path, model, training={"note": "random weights, ASCII-only greedy output"})
    return path


@pytest.fixture(scope="module")
def client(app_client, ckpt):
    with app_client(ckpt, attention_max_cells=JSON_CAP) as c:
        yield c


def attention(client, text, **body) -> dict:
    r = client.post("/v1/attention", json={"text": text, **body})
    assert r.status_code == 200, r.text
    return r.json()


def npy(client, text, **body) -> tuple[np.ndarray, dict]:
    r = client.post("/v1/attention", json={"text": text, "format": "npy", **body})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    return np.load(io.BytesIO(r.content)), r.headers


def error(client, path, body) -> tuple[int, str]:
    r = client.post(path, json=body)
    return r.status_code, r.json()["error"]["message"]


# ------------------------------------------------------------------ json


def test_json_rows_are_causal_probabilities(client):
    out = attention(client, TEXT)
    data = TEXT.encode("utf-8")
    T = len(data)
    a = np.array(out["attention"])
    assert a.shape == (CONFIG.n_layer, CONFIG.n_head, T, T)
    assert out["layers"] == [0, 1, 2] and out["heads"] == [0, 1]
    assert [t["id"] for t in out["tokens"]] == list(data)
    assert out["tokens"][1] == {"id": 0xC3, "text": "\\xc3", "start": 1, "end": 2}  # é: two bytes, one character
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert (a[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0).all(), "attention to a later byte"
    assert (a[..., np.tril_indices(T)[0], np.tril_indices(T)[1]] > 0).all()


def test_layers_and_heads_come_in_the_order_listed(client):
    full = np.array(attention(client, TEXT)["attention"])
    out = attention(client, TEXT, layers=[2, 0], heads=[1, 0])
    assert out["layers"] == [2, 0] and out["heads"] == [1, 0]
    np.testing.assert_array_equal(np.array(out["attention"]), full[[2, 0]][:, [1, 0]])


def test_mean_aggregate_has_one_head_that_is_the_mean(client):
    full = np.array(attention(client, TEXT)["attention"], dtype=np.float32)
    out = attention(client, TEXT, layers=[1, 2], aggregate="mean")
    a = np.array(out["attention"])
    assert a.shape == (2, 1, len(TEXT.encode()), len(TEXT.encode()))
    np.testing.assert_allclose(a[:, 0], full[[1, 2]].mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ npy and png


def test_npy_is_the_same_array_with_tokens_in_a_header(client):
    full = np.array(attention(client, TEXT)["attention"], dtype=np.float32)
    a, headers = npy(client, TEXT)
    assert a.dtype == np.float32 and a.shape == (3, 2, len(TEXT.encode()), len(TEXT.encode()))
    np.testing.assert_array_equal(a, full)  # JSON floats are the float32 values exactly
    assert json.loads(headers["x-tokens"]) == list(TEXT.encode("utf-8"))
    assert headers["x-layers"] == "0,1,2" and headers["x-heads"] == "0,1"

    sub, headers = npy(client, TEXT, layers=[2], heads=[1, 0])
    np.testing.assert_array_equal(sub, full[[2]][:, [1, 0]])
    assert headers["x-layers"] == "2" and headers["x-heads"] == "1,0"

    half, _ = npy(client, TEXT, dtype="float16")
    assert half.dtype == np.float16 and half.shape == full.shape
    np.testing.assert_allclose(half.astype(np.float32), full, atol=1e-3)


def png_size(content: bytes) -> tuple[int, int]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert content[12:16] == b"IHDR"
    return struct.unpack(">II", content[16:24])


def test_png_is_a_heatmap_that_grows_with_the_text(client):
    sizes = []
    for text in ("ab", "é" * 30):
        r = client.post("/v1/attention", json={"text": text, "layers": [1], "heads": [0], "format": "png"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        sizes.append(png_size(r.content))
    assert sizes[1][0] > sizes[0][0] and sizes[1][1] > sizes[0][1], sizes
    r = client.post("/v1/attention", json={"text": "mean", "layers": [0], "aggregate": "mean", "format": "png"})
    assert r.status_code == 200 and png_size(r.content)
    status, message = error(client, "/v1/attention", {"text": "two", "layers": [0, 1], "heads": [0], "format": "png"})
    assert status == 400 and "one layer" in message


def test_png_labels_a_character_without_a_glyph_by_its_code_point():
    """The soak's PNGs of Japanese text came out with empty boxes on their axes, and the log took a warning per
    character: the bundled font has no CJK. Such a character is labelled U+XXXX; what the font has stays as it is."""
    labels = ["a", " ", "é", "", "東", "", "", "\\n", "\\xe2", "Ж", ""]
    assert drawable_labels(labels) == ["a", "␣", "é", "", "U+6771", "", "", "\\n", "\\xe2", "Ж", ""]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = render_png(np.tril(np.ones((len(labels), len(labels)), np.float32)), labels, "layer 0, head 0")
    assert png_size(png) and not [w for w in caught if "missing from font" in str(w.message)], caught


# ------------------------------------------------------------------ limits


def test_json_cell_cap_says_what_to_do(client):
    text = "x" * 60  # 3 * 2 * 60² = 21,600 cells > 20,000
    status, message = error(client, "/v1/attention", {"text": text})
    assert status == 400
    assert "21,600" in message and "npy" in message and "fewer layers or heads" in message
    assert attention(client, text, layers=[0])["layers"] == [0]  # 7,200 cells: fine
    a, _ = npy(client, text)  # npy has no cap
    assert a.shape == (3, 2, 60, 60)


def test_out_of_range_names_the_valid_range(client):
    status, message = error(client, "/v1/attention", {"text": "hi", "layers": [3]})
    assert status == 400 and "0..2" in message and "layers" in message
    status, message = error(client, "/v1/attention", {"text": "hi", "heads": [0, 2]})
    assert status == 400 and "0..1" in message and "heads" in message
    status, message = error(client, "/v1/generate", {"prompt": "hi", "attention": {"layers": [7]}})
    assert status == 400 and "0..2" in message
    status, message = error(client, "/v1/attention", {"text": "hi", "layers": [-1]})
    assert status == 400


def test_text_over_the_context_is_refused(client):
    status, message = error(client, "/v1/attention", {"text": "é" * 33})  # 66 bytes
    assert status == 400 and "66" in message and "64" in message
    assert attention(client, "é" * 32, layers=[0], heads=[0])["attention"]  # exactly 64 bytes fits


# ------------------------------------------------------------------ correctness against an independent computation


def reference_attention(ckpt, ids: list[int], layer: int) -> np.ndarray:
    """(n_head, T, T) attention probabilities of `layer`, from the saved weights with numpy in float64."""
    cfg = json.loads((ckpt / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    nh, d = cfg["n_head"], cfg["d_model"]
    hd = d // nh
    T = len(ids)

    def rms_norm(x, weight):
        return weight * x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg["norm_eps"])

    inv_freq = cfg["rope_theta"] ** (-np.arange(0, hd, 2) / hd)  # (hd/2,)
    angles = np.arange(T)[:, None] * inv_freq[None, :]  # (T, hd/2)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))

    def rope(x):  # x: (nh, T, hd); rotate-half pairs element i with element i + hd/2
        rotated = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos + rotated * sin

    def heads(x):  # (T, d) -> (nh, T, hd)
        return x.reshape(T, nh, hd).transpose(1, 0, 2)

    x = w["embed_tokens.weight"][ids]  # (T, d)
    for i in range(layer + 1):
        p = f"layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"])
        q = rope(heads(h @ w[p + "self_attn.q_proj.weight"].T))
        k = rope(heads(h @ w[p + "self_attn.k_proj.weight"].T))
        v = heads(h @ w[p + "self_attn.v_proj.weight"].T)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)  # (nh, T, T)
        scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if i == layer:
            return probs
        y = (probs @ v).transpose(1, 0, 2).reshape(T, d)  # heads concatenated
        x = x + y @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    raise AssertionError(f"layer {layer} is past the model's {cfg['n_layer']} layers")


@pytest.mark.parametrize("layer", [0, 2])
def test_matches_an_independent_computation_from_the_saved_weights(client, ckpt, layer):
    text = "ROMEO: But, soft! what light through yonder window breaks? é☃"
    ids = list(text.encode("utf-8"))
    expected = reference_attention(ckpt, ids, layer)
    T = len(ids)
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    assert np.abs(expected - uniform).max() > 0.1, "maps this flat would not show a wrong RoPE or scale"
    for head in range(CONFIG.n_head):
        served, _ = npy(client, text, layers=[layer], heads=[head])
        assert served.dtype == np.float32
        diff = np.abs(served[0, 0].astype(np.float64) - expected[head]).max()
        assert diff < 1e-5, f"layer {layer} head {head}: max abs difference {diff:.2e}"


# ------------------------------------------------------------------ attention while generating

GENERATE = {"prompt": PROMPT, "max_new_tokens": 24, "temperature": 0, "attention": {"layers": None, "heads": None}}


def check_rows_match_the_final_text(client, tokens: list[dict], layers=(0, 1, 2), heads=(0, 1)):
    ids = list(PROMPT.encode()) + [t["id"] for t in tokens]
    assert all(i < 0x80 for i in ids), "the fixture's greedy output should be ASCII"
    final = attention(client, bytes(ids).decode("utf-8"))
    full = np.array(final["attention"], dtype=np.float32)
    P = len(PROMPT.encode())
    for j, token in enumerate(tokens):
        rows = np.array(token["attention"], dtype=np.float32)  # (layers, heads, keys)
        query = P + j - 1  # generated byte j was chosen by the query of the byte before it
        assert rows.shape == (len(layers), len(heads), query + 1), rows.shape
        expected = full[list(layers)][:, list(heads), query, : query + 1]
        np.testing.assert_allclose(rows, expected, atol=1e-5, err_msg=f"generated byte {j}")


def test_generate_rows_equal_the_attention_of_the_final_text(client):
    r = client.post("/v1/generate", json=GENERATE)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["tokens"]) == 24 and out["attention_layers"] == [0, 1, 2] and out["attention_heads"] == [0, 1]
    check_rows_match_the_final_text(client, out["tokens"])


def test_streamed_rows_equal_the_attention_of_the_final_text(client):
    events = []
    with client.stream("POST", "/v1/generate", json={**GENERATE, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    tokens = [e["token"] for e in events if "token" in e]
    assert len(tokens) == 24 and events[-1]["finish_reason"] == "length"
    check_rows_match_the_final_text(client, tokens)
    plain = client.post("/v1/generate", json=GENERATE).json()["tokens"]
    assert [t["id"] for t in tokens] == [t["id"] for t in plain]


def test_generate_rows_for_chosen_layers_and_heads_in_order(client):
    body = {**GENERATE, "max_new_tokens": 6, "attention": {"layers": [2, 0], "heads": [1]}}
    out = client.post("/v1/generate", json=body).json()
    assert out["attention_layers"] == [2, 0] and out["attention_heads"] == [1]
    check_rows_match_the_final_text(client, out["tokens"], layers=(2, 0), heads=(1,))
