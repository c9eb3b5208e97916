"""Contract tests of the HTTP API, in process (the app's lifespan runs; the model is a real tiny checkpoint)."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
import torch

from live import StepGate
from model import TinyLLM
from model.generate import generate
from model.sampling import SamplingParams
from model.tokenizer import tokenizer
from support import assert_envelope, sse_events


@pytest.fixture(scope="module")
def client(app_client, tiny_checkpoint):
    with app_client(tiny_checkpoint, max_body_bytes=4096, max_prompt_bytes=1000, max_new_tokens=500) as c:
        yield c


def gen(client, **body):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream(client, **body) -> list:
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return sse_events(lines)


def test_health_and_model(client, tiny_checkpoint):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["config"]["n_layer"] == 2 and info["context_length"] == 64
    assert info["num_params"] == TinyLLM.load(tiny_checkpoint, device="cpu").model.num_params()
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["training"]["note"] == "random weights for tests"


def test_tokenize_gives_bytes_labels_and_char_offsets(client):
    toks = client.post("/v1/tokenize", json={"text": "hé🙂"}).json()
    assert toks["count"] == 7
    assert [t["id"] for t in toks["tokens"]] == list("hé🙂".encode())
    assert [t["text"] for t in toks["tokens"]][:3] == ["h", "\\xc3", "\\xa9"]
    assert [(t["start"], t["end"]) for t in toks["tokens"]] == [(0, 1), (1, 2), (1, 2)] + [(2, 3)] * 4
    assert toks["labels"] == ["h", "é", "", "🙂", "", "", ""]


def test_greedy_equals_model_package(client, tiny_checkpoint):
    out = gen(client, prompt="ROMEO:", max_new_tokens=40, temperature=0)
    llm = TinyLLM.load(tiny_checkpoint, device="cpu")
    expected = [s.token for s in generate(llm.runner, list(b"ROMEO:"), 40, SamplingParams(temperature=0))]
    assert [t["id"] for t in out["tokens"]] == expected
    assert out["text"] == bytes(expected).decode("utf-8", errors="replace")
    assert out["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 6, "completion_tokens": 40, "total_tokens": 46}
    assert out["timing"]["prefill_ms"] > 0 and out["timing"]["tokens_per_second"] > 0


def test_seed_reproducible_and_logprobs(client, tiny_checkpoint):
    body = dict(prompt="abc", max_new_tokens=30, temperature=1.0, top_k=50, top_p=0.9, seed=7, logprobs=3)
    a, b = gen(client, **body), gen(client, **body)
    assert a["tokens"] == b["tokens"]
    assert [t["id"] for t in gen(client, **{**body, "seed": 8})["tokens"]] != [t["id"] for t in a["tokens"]]
    # logprobs are the model's own log-softmax at each position
    llm = TinyLLM.load(tiny_checkpoint, device="cpu")
    ids = list(b"abc") + [t["id"] for t in a["tokens"]]
    with torch.no_grad():
        logits, _ = llm.model(torch.tensor([ids]))
    lp = torch.log_softmax(logits[0].float(), -1)
    for i, tok in enumerate(a["tokens"]):
        row = lp[2 + i]
        assert tok["logprob"] == pytest.approx(row[tok["id"]].item(), abs=1e-4)
        tops = tok["top_logprobs"]
        assert len(tops) == 3 and [t["id"] for t in tops] == torch.topk(row, 3).indices.tolist()
        assert tops[0]["logprob"] >= tops[1]["logprob"] >= tops[2]["logprob"]


def test_stop_string_ends_generation_and_is_excluded(client):
    body = dict(prompt="To be", max_new_tokens=60, temperature=1.0, seed=3)
    first = gen(client, **body)
    ids = [t["id"] for t in first["tokens"]]
    k = next(i for i in range(1, len(ids)) if 0x21 <= ids[i] < 0x7F)  # a printable ASCII byte to stop on
    stop = chr(ids[k])
    k = ids.index(ids[k])  # its first occurrence
    out = gen(client, **body, stop=[stop, "never-appears"])
    assert out["finish_reason"] == "stop"
    assert out["text"] == bytes(ids[:k]).decode("utf-8", errors="replace")
    assert stop not in out["text"]
    assert len(out["tokens"]) == k + 1  # the stop byte was generated, then cut from the text


def test_stream_matches_non_stream(client):
    body = dict(prompt="hé🙂 ", max_new_tokens=50, temperature=0.9, seed=11, logprobs=2)
    full = gen(client, **body)
    events = stream(client, **body)
    tokens, last = events[:-1], events[-1]
    assert [e["token"] for e in tokens] == full["tokens"]
    assert "".join(e["text"] for e in tokens) == full["text"] == last["text"]
    assert last["finish_reason"] == full["finish_reason"] and last["usage"] == full["usage"]


def test_stream_never_splits_a_character(client):
    # a prompt that makes a random model emit multi-byte characters is not guaranteed; check the invariant
    # on every stream: each event's text is whole characters and no replacement char appears that the
    # non-streamed decode does not also contain at the same place
    for seed in range(5):
        events = stream(client, prompt="ü", max_new_tokens=40, temperature=1.5, seed=seed)
        joined = "".join(e["text"] for e in events[:-1])
        assert joined == events[-1]["text"]
        ids = [e["token"]["id"] for e in events[:-1]]
        assert joined == bytes(ids).decode("utf-8", errors="replace")


def test_stream_labels_relabel_just_the_newest_character(client):
    # applied one event at a time to the prompt's labels, each event's labels give the whole text's char labels
    prompt = "ü"
    labels = client.post("/v1/tokenize", json={"text": prompt}).json()["labels"]
    ids = list(prompt.encode())
    for seed in range(5):
        shown, seen = list(labels), list(ids)
        for event in stream(client, prompt=prompt, max_new_tokens=40, temperature=1.5, seed=seed)[:-1]:
            seen.append(event["token"]["id"])
            shown.append("")
            shown[len(shown) - len(event["labels"]) :] = event["labels"]
        assert shown == tokenizer.char_labels(seen)


def test_context_full_and_zero_tokens(client):
    out = gen(client, prompt="x" * 60, max_new_tokens=100, temperature=0)
    assert out["finish_reason"] == "context_full" and out["usage"]["completion_tokens"] == 4
    out = gen(client, prompt="x" * 64, max_new_tokens=10, temperature=0)
    assert out["finish_reason"] == "context_full" and out["tokens"] == []
    out = gen(client, prompt="abc", max_new_tokens=0)
    assert out["finish_reason"] == "length" and out["text"] == ""


def test_long_prompt_needs_truncate(client):
    assert_envelope(client.post("/v1/generate", json={"prompt": "y" * 100}), 400, "prompt")
    out = gen(client, prompt="y" * 90 + "END", max_new_tokens=10, temperature=0, truncate=True)
    assert out["truncated_prompt_tokens"] == 93 - 54
    assert out["usage"]["prompt_tokens"] == 54 and out["usage"]["completion_tokens"] == 10


@pytest.mark.parametrize(
    "body,param",
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a", "bogus": 1}, "bogus"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "a", "max_new_tokens": -1}, "max_new_tokens"),
        ({"prompt": "a", "max_new_tokens": 10**9}, "max_new_tokens"),
        ({"prompt": "a", "max_new_tokens": "5"}, "max_new_tokens"),
        ({"prompt": "a", "temperature": -0.1}, "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "top_p": 1.5}, "top_p"),
        ({"prompt": "a", "top_k": -1}, "top_k"),
        ({"prompt": "a", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "a", "logprobs": 21}, "logprobs"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "stop": [""]}, "stop.0"),
        ({"prompt": "a", "stop": "x"}, "stop"),
        ({"prompt": "a", "stream": "yes"}, "stream"),
        ({"prompt": "a", "attention": {"layers": [2]}}, "attention.layers"),
        ({"prompt": "a", "attention": {"heads": [5]}}, "attention.heads"),
        ({"prompt": "\ud800"}, "prompt"),
    ],
)
def test_bad_generate_bodies_name_the_field(client, body, param):
    r = client.post("/v1/generate", content=json.dumps(body), headers={"content-type": "application/json"})
    assert_envelope(r, 400, param)


def test_non_finite_floats_rejected(client):
    for raw in ('{"prompt": "a", "temperature": NaN}', '{"prompt": "a", "top_p": Infinity}'):
        r = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] in ("temperature", "top_p")


def test_malformed_requests(client):
    r = client.post("/v1/generate", content="{bad", headers={"content-type": "application/json"})
    assert_envelope(r, 400, None)
    assert_envelope(client.post("/v1/generate", json=[1, 2]), 400, None)
    assert_envelope(client.post("/v1/generate", json={"prompt": "z" * 5000}), 413, None)  # body over 4096
    assert_envelope(client.post("/v1/generate", json={"prompt": "z" * 1001}), 413, "prompt")
    assert_envelope(client.get("/nowhere"), 404, None)
    assert_envelope(client.get("/v1/generate"), 405, None)
    assert_envelope(client.post("/v1/tokenize", json={"txt": "a"}), 400, "text")


def test_openapi_docs_have_examples(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for name in ("GenerateRequest", "TokenizeRequest", "AttentionRequest"):
        assert spec["components"]["schemas"][name].get("examples"), name


def test_a_failing_sequence_does_not_take_the_batch_down(client, monkeypatch):
    """A sequence whose sampling fails in a decode step, beside three others in the same batch (the engine is held
    until all four are decoding, so none can have ended first): it alone gets the 500, the others their bytes."""
    from model import choice

    FAILS_AT = 10  # tokens: past the few loops that taking the four in lets it run, so in a step with the others
    real_row, real_sample_rows = choice._row, choice.sample_rows

    def row(seq, vocab):  # the native sampler's row of each sequence
        if seq.params.temperature == 0.123 and seq.generated >= FAILS_AT:  # the request chosen to fail
            raise RuntimeError("injected sampling failure")
        return real_row(seq, vocab)

    def sample_rows(logits, params, histories, n_prompt, seeds, generated, *rest):  # without the extension
        if any(p.temperature == 0.123 and g >= FAILS_AT for p, g in zip(params, generated)):
            raise RuntimeError("injected sampling failure")
        return real_sample_rows(logits, params, histories, n_prompt, seeds, generated, *rest)

    monkeypatch.setattr(choice, "_row", row)
    monkeypatch.setattr(choice, "sample_rows", sample_rows)
    good = dict(prompt="fine", max_new_tokens=40, temperature=0.7, seed=2)
    expected = gen(client, **good)["text"]
    engine = client.app.state.models.get(None).engine
    gate = StepGate(engine)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        try:  # the gate opens before the pool waits for its requests, whatever happens
            bad = dict(prompt="bad", max_new_tokens=40, temperature=0.123)
            bad = pool.submit(client.post, "/v1/generate", json=bad)
            goods = [pool.submit(client.post, "/v1/generate", json=good) for _ in range(3)]
            gate.take_in(4)
            gate.open()
            r = bad.result()
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            assert "injected" not in r.text and "Traceback" not in r.text
            assert [g.result().json()["text"] for g in goods] == [expected] * 3
        finally:
            gate.open()
            del engine._deliver  # the engine's own again, for the module's other tests
    assert client.get("/health").json() == {"status": "ok"}
