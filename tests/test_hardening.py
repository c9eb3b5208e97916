"""Bad input the fuzzer may not reach on its own, named one by one (in process, on the tiny checkpoint), plus
CORS and the serving path's freedom from pickle. What tests/test_server.py, test_openai.py and
test_attention.py already cover (empty prompt, NaN/Infinity on /v1/generate, top_p 0, wrong types,
out-of-range indices, the cell cap, ...) is not repeated here.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.process import ROOT
from support import assert_envelope

CONTROL = "\x00\x01\x07\x08\x0b\x0c\x1b\x7f nul\x00end"  # control characters and NUL are bytes like any other


@pytest.fixture(scope="module")
def client(app_client, tiny_checkpoint):
    with app_client(tiny_checkpoint, max_body_bytes=4096) as c:
        yield c


def raw(client, path: str, content: bytes | str, content_type: str = "application/json"):
    return client.post(path, content=content, headers={"content-type": content_type})


# ------------------------------------------------------------------ control characters and NUL work


def test_control_characters_and_nul_are_accepted_everywhere(client):
    n = len(CONTROL.encode())
    body = {"prompt": CONTROL, "max_new_tokens": 5, "temperature": 0, "utf8": "any"}  # every byte counts
    out = client.post("/v1/generate", json=body).json()
    assert out["usage"]["prompt_tokens"] == n and out["usage"]["completion_tokens"] == 5
    with client.stream("POST", "/v1/generate", json={"prompt": CONTROL, "max_new_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and [line for line in r.iter_lines() if line][-1] == "data: [DONE]"
    toks = client.post("/v1/tokenize", json={"text": CONTROL}).json()
    assert [t["id"] for t in toks["tokens"]] == list(CONTROL.encode())
    assert toks["tokens"][0]["text"] == "\\x00"
    att = client.post("/v1/attention", json={"text": CONTROL, "layers": [0], "heads": [0]}).json()
    assert len(att["attention"][0][0]) == n
    done = client.post("/v1/completions", json={"model": "tiny", "prompt": CONTROL, "max_tokens": 2, "echo": True})
    assert done.status_code == 200 and done.json()["choices"][0]["text"].startswith(CONTROL)
    ids = client.post("/v1/completions", json={"model": "tiny", "prompt": [0, 0, 27], "max_tokens": 2})
    assert ids.status_code == 200
    stop = client.post("/v1/generate", json={"prompt": "a", "stop": ["\x00"], "max_new_tokens": 3})
    assert stop.status_code == 200


# ------------------------------------------------------------------ refused, in the envelope, naming the field


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/generate", '{"prompt": "a", "stop": ["\\ud800"]}', "stop.0"),
        ("/v1/generate", '{"prompt": "\\udfff x"}', "prompt"),
        ("/v1/tokenize", '{"text": "\\ud800"}', "text"),
        ("/v1/attention", '{"text": "a\\udc00"}', "text"),
        ("/v1/generate", '{"prompt": "a", "repetition_penalty": Infinity}', "repetition_penalty"),
        ("/v1/generate", '{"prompt": "a", "temperature": -Infinity}', "temperature"),
        ("/v1/generate", '{"prompt": "a", "temperature": 1e999}', "temperature"),
        ("/v1/generate", '{"prompt": "a", "max_new_tokens": 1e3}', "max_new_tokens"),
        ("/v1/generate", '{"prompt": "a", "max_new_tokens": 100000000000000000000000000000}', "max_new_tokens"),
        ("/v1/generate", '{"prompt": "a", "max_new_tokens": true}', "max_new_tokens"),
        ("/v1/generate", '{"prompt": "a", "seed": 9223372036854775808}', "seed"),
        ("/v1/generate", '{"prompt": "a", "max_new_tokens": null}', "max_new_tokens"),
        ("/v1/generate", '{"prompt": "a", "attention": {"layers": [0], "rows": 1}}', "attention.rows"),
        ("/v1/generate", '{"prompt": "a", "attention": {"layers": [-1]}}', "attention.layers.0"),
        ("/v1/generate", '{"prompt": "a", "stop": ["' + "s" * 257 + '"]}', "stop.0"),
        ("/v1/generate", '{"prompt": "a", "stop": [' + ",".join(['"x"'] * 17) + "]}", "stop"),
        ("/v1/tokenize", '{"text": "a", "extra": 1}', "extra"),
        ("/v1/tokenize", '{"text": null}', "text"),
        ("/v1/attention", '{"text": "a", "format": "gif"}', "format"),
        ("/v1/attention", '{"text": "a", "colour": "red"}', "colour"),
        ("/v1/attention", '{"text": ""}', "text"),
        ("/v1/attention", '{"text": "a", "layers": [99999999999999999999]}', "layers"),
    ],
)
def test_bad_values_are_400_naming_the_field(client, path, body, param):
    assert_envelope(raw(client, path, body), 400, param)


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/completions", '{"model": "tiny", "prompt": "\\ud800"}', "prompt"),
        ("/v1/completions", '{"model": "tiny", "prompt": "a", "stop": "\\ud800"}', "stop"),
        ("/v1/completions", '{"model": "tiny", "prompt": "a", "temperature": NaN}', "temperature"),
        ("/v1/completions", '{"model": "tiny", "prompt": "a", "frequency_penalty": Infinity}', "frequency_penalty"),
        ("/v1/completions", '{"model": "tiny", "prompt": "a", "max_tokens": -5}', "max_tokens"),
        ("/v1/completions", '{"model": "tiny", "prompt": "a", "max_tokens": 100000000000}', "max_tokens"),
        ("/v1/completions", '{"model": "tiny", "prompt": "a", "n": 129}', "n"),
        (
            "/v1/completions",
            '{"model": "tiny", "prompt": "a", "stream_options": {"x": 1}, "stream": true}',
            "stream_options",
        ),
    ],
)
def test_openai_bad_values_are_400_in_openai_shape(client, path, body, param):
    assert_envelope(raw(client, path, body), 400, param, openai=True)


@pytest.mark.parametrize(
    "content,content_type",
    [
        (b"", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),  # not UTF-8: FastAPI's "error parsing the body"
        (b'{"prompt": "a"', "application/json"),
        (b'"just a string"', "application/json"),
        (b"null", "application/json"),
        (b"[" * 2000 + b"]" * 2000, "application/json"),  # deeply nested
        (b"prompt=a", "application/x-www-form-urlencoded"),
        (b'{"prompt": "a"}', "text/plain"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/generate", "/v1/tokenize", "/v1/attention", "/v1/completions"])
def test_bodies_that_are_not_json_objects_are_400(client, path, content, content_type):
    r = raw(client, path, content, content_type)
    if r.status_code == 200:  # FastAPI reads a JSON object whatever the Content-Type claims
        assert content_type == "text/plain"
        return
    assert_envelope(r, 400, r.json()["error"]["param"], openai=path == "/v1/completions")
    assert r.json()["error"]["param"] in (None, "prompt", "text", "model")


def test_limits_and_routing_on_openai_paths_keep_openai_shape(client):
    too_big = {"model": "tiny", "prompt": "z" * 5000}
    assert_envelope(client.post("/v1/completions", json=too_big), 413, openai=True)
    assert_envelope(client.post("/v1/generate", json={"prompt": "z" * 5000}), 413)
    assert_envelope(client.delete("/v1/completions"), 405, openai=True)
    assert_envelope(client.get("/v1/models/tiny/extra"), 404, openai=True)
    assert_envelope(client.get("/v1/nothing"), 404)


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert_envelope(r, 413)


def test_tiny_temperature_top_p_and_penalty_generate(client):
    """Found by the fuzzer: these valid values made the sampler's probabilities NaN, a 500 for the whole batch."""
    for extreme in (
        {"temperature": 5e-324},
        {"top_p": 5e-324},
        {"repetition_penalty": 5e-324},
        {"temperature": 1e-300, "top_p": 1e-300, "repetition_penalty": 1e-300, "top_k": 1},
    ):
        r = client.post("/v1/generate", json={"prompt": "ab", "max_new_tokens": 4, "utf8": "any", **extreme})
        assert r.status_code == 200, (extreme, r.text)
        assert r.json()["usage"]["completion_tokens"] == 4


# ------------------------------------------------------------------ CORS: off unless configured


def test_cors_is_off_by_default(client):
    r = client.options(
        "/v1/generate", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(app_client, tiny_checkpoint):
    with app_client(tiny_checkpoint, cors_origins=["https://app.example"]) as c:
        pre = c.options(
            "/v1/generate",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        r = c.post("/v1/tokenize", json={"text": "a"}, headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options(
            "/v1/generate", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        r = c.post("/v1/tokenize", json={"text": "a"}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


# ------------------------------------------------------------------ no pickle on the serving path


def test_serving_never_unpickles(app_client, tiny_checkpoint, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the serving path unpickled something")

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)
    with app_client(tiny_checkpoint) as c:  # start-up loads the checkpoint
        assert c.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 3}).status_code == 200
        assert c.post("/v1/attention", json={"text": "ab", "format": "npy"}).status_code == 200
        assert c.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2}).status_code == 200
        assert c.get("/v1/model").status_code == 200


def test_no_stack_traces_in_answers(tiny_checkpoint):
    """An unexpected exception in a route is a 500 envelope without the trace (the trace goes to the log)."""
    app = create_app(Settings(_env_file=None, checkpoint=tiny_checkpoint, device="cpu", api_key=None))

    @app.get("/__boom")
    async def boom():
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/__boom")
    assert_envelope(r, 500)
    assert "secret internal detail" not in r.text and "RuntimeError" not in r.text
    assert json.loads(r.text)["error"]["type"] == "server_error"


def test_the_container_runs_as_a_non_root_user():
    """The image's last stage switches to an unprivileged user before the server starts (scripts/docker-smoke.sh
    runs the image for real in CI)."""
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    last_from = max(i for i, words in enumerate(lines) if words[0] == "FROM")
    users = [words[1] for words in lines[last_from:] if words[0] == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
