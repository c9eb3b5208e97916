"""The inspection routes over HTTP, against real server processes: POST /v1/attention/explain, /v1/lens,
/v1/attribute, /v1/ablate, and heads_off on /v1/attention.

Numbers are checked against the float64 reference rebuilt from the saved weights (tests/reference.py) and against
the server's other routes (/v1/attention's maps, prompt scoring on /v1/completions); bad input against the error
envelope; and that inspecting, ablated or not, changes nothing that other requests get.
"""

from __future__ import annotations

import io
import math
import threading

import httpx
import numpy as np
import pytest

from reference import reference
from support import assert_envelope

TEXT = "ROMEO: But, soft! é☃ what light?"
IDS = list(TEXT.encode())
T = len(IDS)


def post(server, path: str, **body) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def served_maps(server, text: str, **body) -> np.ndarray:
    r = httpx.post(f"{server.url}/v1/attention", json={"text": text, "format": "npy", **body}, timeout=60)
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def close(served, expected, tol: float = 1e-5) -> None:
    diff = np.abs(np.asarray(served, dtype=np.float64) - expected).max()
    assert diff < tol, f"max abs difference {diff:.2e}"


def scored_logprobs(server, model: str, text: str) -> list[float]:
    """log p(byte t | bytes before) for t = 1..T-1, from prompt scoring (/v1/completions with echo)."""
    body = {"model": model, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1}
    return post(server, "/v1/completions", **body)["choices"][0]["logprobs"]["token_logprobs"][1:]


# ------------------------------------------------------------------ one head, step by step


@pytest.mark.parametrize(("layer", "head", "query"), [(1, 0, T - 1), (0, 1, 12)])
def test_explain_matches_the_reference_and_the_attention_maps(sharp_server, sharp, layer, head, query):
    out = post(sharp_server, "/v1/attention/explain", text=TEXT, layer=layer, head=head, query=query)
    ref = reference(sharp, IDS)
    character = len(TEXT.encode()[: query + 1].decode("utf-8", errors="ignore")) - 1  # the character byte query ends
    assert (out["layer"], out["head"], out["query"], out["query_character"]) == (layer, head, query, character)
    assert [t["id"] for t in out["tokens"]] == IDS and out["heads_off"] == [] and not out["switched_off"]
    close(out["q_before_rope"], ref.q_before_rope[layer][head, query])
    close(out["q"], ref.q[layer][head, query])
    close(out["keys"], ref.k[layer][head])
    close(out["values"], ref.v[layer][head])
    seen = slice(0, query + 1)
    close(out["raw_scores"][seen], (ref.k[layer][head] @ ref.q[layer][head, query])[seen])
    close(out["weights"], ref.probs[layer][head, query])
    close(out["z"], ref.z[layer][head, query])
    close(out["write"], ref.head_writes[layer][head, query])

    # masked scores are null: a softmax applied to the array as sent (null as −∞) gives the weights
    assert out["mask"] == [j <= query for j in range(T)]
    for name in ("raw_scores", "scaled_scores"):
        assert [s is None for s in out[name]] == [j > query for j in range(T)], name
    raw, scaled, weights = (
        np.array([-np.inf if s is None else s for s in out[k]], dtype=np.float64)
        for k in ("raw_scores", "scaled_scores", "weights")
    )
    assert out["sqrt_d_k"] == math.sqrt(out["head_dim"])
    close(scaled[seen] * out["sqrt_d_k"], raw[seen], 1e-6)
    close(np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum(), weights, 1e-6)
    close(weights, served_maps(sharp_server, TEXT, layers=[layer], heads=[head])[0, 0, query], 1e-6)
    assert all(v < 1e-5 for v in out["checks"].values()), out["checks"]


def test_explain_by_character_walks_through_its_last_byte(sharp_server):
    c = TEXT.index("☃")  # the character index; its 3 bytes end at byte c + 1 + 2 (é before it is 2 bytes)
    out = post(sharp_server, "/v1/attention/explain", text=TEXT, layer=0, head=0, query=c, query_unit="character")
    assert out["query_character"] == c and out["query"] == len(TEXT[: c + 1].encode()) - 1
    assert out == post(sharp_server, "/v1/attention/explain", text=TEXT, layer=0, head=0, query=out["query"])
    for byte in range(out["query"] - 2, out["query"] + 1):  # each of its 3 bytes names the same character
        assert (
            post(sharp_server, "/v1/attention/explain", text=TEXT, layer=0, head=0, query=byte)["query_character"] == c
        )


def test_heads_off_agree_between_explain_and_attention(sharp_server, sharp):
    heads_off = [[0, 0], [0, 1]]  # every head of layer 0: layer 1 reads a stream without that attention
    maps = served_maps(sharp_server, TEXT, heads_off=heads_off)
    plain = served_maps(sharp_server, TEXT)
    # a switched-off head's own map is still what it computed; bitwise: the heads-off run (model.trace) is op for op
    # the plain model at the same shape, and layer 0's maps come before anything is switched off
    np.testing.assert_array_equal(maps[0], plain[0])
    assert np.abs(maps[1] - plain[1]).max() > 1e-3
    close(maps[1], reference(sharp, IDS, attention_removed=[0]).probs[1])
    out = post(sharp_server, "/v1/attention/explain", text=TEXT, layer=1, head=1, query=T - 1, heads_off=heads_off)
    close(out["weights"], maps[1, 1, T - 1], 1e-6)
    assert out["heads_off"] == heads_off and out["ablation"] == "zero"


# ------------------------------------------------------------------ the lens, attribution and ablation


def test_lens_last_stage_agrees_with_prompt_scoring(sharp_server):
    out = post(sharp_server, "/v1/lens", text=TEXT, top_k=3)
    assert out["stages"] == ["embedding", "0.attention", "0.mlp", "1.attention", "1.mlp"]
    S = len(out["stages"])
    assert np.array(out["top_ids"]).shape == (S, T, 3) and np.array(out["next_rank"]).shape == (S, T - 1)
    close(np.log(out["next_prob"][-1]), scored_logprobs(sharp_server, "sharp", TEXT))
    labels = out["byte_labels"]
    assert len(labels) == 256 and labels[ord("a")] == "a" and labels[0xE2] == "\\xe2"
    for s in range(S):
        assert out["bits_per_byte"][s] == pytest.approx(-np.log2(out["next_prob"][s]).mean(), rel=1e-6)


def test_attribution_sums_to_the_logit(sharp_server, sharp):
    ref = reference(sharp, IDS)
    for position, target in ((10, None), (T - 1, ord("a"))):
        body = {"text": TEXT, "position": position, "top": 4} | ({} if target is None else {"target": target})
        out = post(sharp_server, "/v1/attribute", **body)
        expected_target = IDS[position + 1] if target is None else target
        assert out["target"] == expected_target and out["target_text"] == chr(expected_target)
        assert abs(out["residual_error"]) < 1e-4 and out["total"] + out["residual_error"] == pytest.approx(out["logit"])
        assert abs(out["logit"] - ref.logits[position, expected_target]) < 1e-5
        heads = np.array(out["heads"])
        assert out["total"] == pytest.approx(out["embedding"] + heads.sum() + sum(out["mlps"]), abs=1e-5)
        sizes = [abs(c["logit"]) for c in out["top"]]
        assert len(sizes) == 4 and sizes == sorted(sizes, reverse=True)


def test_ablate_with_no_head_off_changes_nothing_and_scores_like_the_server(sharp_server, sharp):
    out = post(sharp_server, "/v1/ablate", text=TEXT, heads_off=[])
    # bitwise: with no head off both losses read the same kept run
    assert out["loss_bits"] == out["loss_bits_ablated"] and out["change_bits_per_byte"] == 0
    assert out["loss_bits"][0] is None and len(out["loss_bits"]) == T
    close(out["loss_bits"][1:], -np.array(scored_logprobs(sharp_server, "sharp", TEXT)) / math.log(2))

    off = post(sharp_server, "/v1/ablate", text=TEXT, heads_off=[[0, 0], [0, 1]])
    logits = reference(sharp, IDS, attention_removed=[0]).logits[:-1]
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    close(off["loss_bits_ablated"][1:], -logprobs[np.arange(T - 1), IDS[1:]] / math.log(2))
    assert off["loss_bits"] == out["loss_bits"]  # the plain run again: the same ops at the same shapes
    assert off["change_bits_per_byte"] == pytest.approx(off["bits_per_byte_ablated"] - off["bits_per_byte"])
    mean = post(sharp_server, "/v1/ablate", text=TEXT, heads_off=[[0, 0], [0, 1]], ablation="mean")
    assert mean["ablation"] == "mean" and mean["bits_per_byte_ablated"] != off["bits_per_byte_ablated"]


# ------------------------------------------------------------------ bad input


BAD = [
    ("/v1/attention/explain", {"layer": 2, "head": 0, "query": 0}, "layer"),
    ("/v1/attention/explain", {"layer": 0, "head": 2, "query": 0}, "head"),
    ("/v1/attention/explain", {"layer": 0, "head": 0, "query": 5}, "query"),
    ("/v1/attention/explain", {"layer": 0, "head": 0, "query": 4, "query_unit": "character"}, "query"),
    ("/v1/attention/explain", {"layer": 0, "head": 0, "query": -1}, "query"),
    ("/v1/attention/explain", {"layer": 0, "head": 0}, "query"),
    ("/v1/attention/explain", {"layer": 0, "head": 0, "query": 0, "heads_off": [[1, 1], [1, 1]]}, "heads_off"),
    ("/v1/attention/explain", {"layer": 0, "head": 0, "query": 0, "heads_off": [[2, 0]]}, "heads_off"),
    ("/v1/attention/explain", {"layer": 0, "head": 0, "query": 0, "heads_off": [[0]]}, "heads_off.0"),
    ("/v1/attention/explain", {"layer": 0, "head": 0, "query": 0, "ablation": "half"}, "ablation"),
    ("/v1/attention/explain", {"layer": 0, "head": 0, "query": 0, "queries": [0]}, "queries"),
    ("/v1/lens", {"top_k": 0}, "top_k"),
    ("/v1/lens", {"heads_off": [[0, 5]]}, "heads_off"),
    ("/v1/attribute", {"position": 5}, "position"),
    ("/v1/attribute", {"position": 4}, "target"),
    ("/v1/attribute", {"position": 0, "target": 256}, "target"),
    ("/v1/ablate", {}, "heads_off"),
    ("/v1/ablate", {"heads_off": [[0, 0], [0, 0]]}, "heads_off"),
    ("/v1/attention", {"heads_off": [[0, 1], [0, 1]]}, "heads_off"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD)
def test_bad_input_is_a_400_naming_the_field(server, path, body, param):
    r = httpx.post(f"{server.url}{path}", json={"text": "Hé!!", **body}, timeout=30)  # 5 bytes, 4 characters
    assert_envelope(r, 400, param)


FIELDS = {
    "/v1/attention/explain": {"layer": 0, "head": 0, "query": 0},
    "/v1/lens": {},
    "/v1/attribute": {"position": 0},
    "/v1/ablate": {"heads_off": []},
}


@pytest.mark.parametrize("path", FIELDS)
def test_texts_that_do_not_fit_and_unknown_models_are_refused(server, path):
    for text in ("", "x" * 65):  # the tiny model's context is 64 bytes
        r = httpx.post(f"{server.url}{path}", json={"text": text, **FIELDS[path]}, timeout=30)
        assert_envelope(r, 400, "text")
    if path == "/v1/ablate":  # a loss needs a second byte
        assert_envelope(httpx.post(f"{server.url}{path}", json={"text": "x", **FIELDS[path]}), 400, "text")
    r = httpx.post(f"{server.url}{path}", json={"text": "ab", "model": "nope", **FIELDS[path]}, timeout=30)
    assert_envelope(r, 404, "model")


# ------------------------------------------------------------------ what other requests get


def test_inspecting_changes_nothing_other_requests_get(server):
    greedy = {"prompt": "To be, or not", "max_new_tokens": 24, "temperature": 0, "logprobs": 2}
    before = post(server, "/v1/generate", **greedy)
    maps = served_maps(server, "To be, or not")
    stop, failures = threading.Event(), []

    def inspect_in_a_loop():
        bodies = [
            ("/v1/ablate", {"text": "To be, or not", "heads_off": [[0, 0], [1, 1]], "ablation": "mean"}),
            ("/v1/attention/explain", {"text": "To be", "layer": 1, "head": 1, "query": 4, "heads_off": [[0, 1]]}),
            ("/v1/lens", {"text": "To be, or not", "heads_off": [[1, 0]]}),
            ("/v1/attention", {"text": "To be, or not", "heads_off": [[0, 0]], "format": "npy"}),
        ]
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                for path, body in bodies:
                    if (r := c.post(path, json=body)).status_code != 200:
                        failures.append(r.text)

    threads = [threading.Thread(target=inspect_in_a_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        during = [post(server, "/v1/generate", **greedy) for _ in range(3)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:2]
    for out in during:
        assert out["tokens"] == before["tokens"]  # the same bytes, logprobs and alternatives, to the bit
    np.testing.assert_array_equal(served_maps(server, "To be, or not"), maps)


# ------------------------------------------------------------------ the next-byte distribution


def test_next_byte_is_the_models_whole_distribution(sharp_server):
    out = post(sharp_server, "/v1/next-byte", text=TEXT, position=12)
    assert out["position"] == 12 and sorted(out["ids"]) == list(range(256))
    probs = np.array(out["probs"])
    assert abs(probs.sum() - 1) < 1e-5 and (np.diff(probs) <= 0).all(), "every byte, most likely first"
    lens = post(sharp_server, "/v1/lens", text=TEXT, top_k=20)
    assert out["ids"][:20] == lens["top_ids"][-1][12]
    close(out["probs"][:20], lens["top_probs"][-1][12], 1e-6)
    # the probability of the byte that came is the one prompt scoring gives
    came = out["ids"].index(IDS[13])
    assert abs(math.log(out["probs"][came]) - scored_logprobs(sharp_server, "sharp", TEXT)[12]) < 1e-4
    assert out["labels"][0] == lens["byte_labels"][out["ids"][0]]
    assert post(sharp_server, "/v1/next-byte", text=TEXT)["position"] == T - 1
    r = httpx.post(f"{sharp_server.url}/v1/next-byte", json={"text": TEXT, "position": T}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "position"
