"""Bearer-token auth against a real server started with TINYLLM_API_KEY (debug logging, to show the key stays out)."""

from __future__ import annotations

import httpx
import openai
import pytest

from server.auth import bearer_token
from server.process import running_server

KEY = "tl-test-key-7f3a9c1e5b"
OPEN = {"/health", "/"}  # and /static/*: the page's files, which hold no data
OPENAI_PREFIXES = ("/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info")  # carry `code`
UNDOCUMENTED = [
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/no/such/route"),
    ("POST", "/v1/completions"),
]


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    with running_server(tiny_checkpoint, "--log-level", "debug", env={"TINYLLM_API_KEY": KEY}) as s:
        yield s


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def every_route(server) -> list[tuple[str, str]]:
    """Every (method, path) the app documents, plus the undocumented ones; path parameters filled in."""
    spec = httpx.get(f"{server.url}/openapi.json", headers=auth()).json()
    routes = [
        (method.upper(), path.replace("{model}", "tiny")) for path, item in spec["paths"].items() for method in item
    ]
    assert {"/v1/generate", "/v1/completions", "/v1/models", "/v1/attention", "/tokenize"} <= {p for _, p in routes}
    return sorted(set(routes) | set(UNDOCUMENTED))


def assert_401(r: httpx.Response):
    assert r.status_code == 401, (r.request.method, r.request.url, r.text)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    error = r.json()["error"]
    assert error["type"] == "authentication_error" and error["message"]
    assert set(error) == (
        {"message", "type", "param", "code"}
        if r.request.url.path.startswith(OPENAI_PREFIXES)
        else {"message", "type", "param"}
    )


def test_health_and_the_page_need_no_key(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{server.url}/static/main.js").status_code == 200
    assert_401(httpx.post(f"{server.url}/v1/attention", json={"text": "hi"}))  # the data behind it does


def test_every_other_route_needs_the_key(server):
    for method, path in every_route(server):
        if path in OPEN:
            continue
        url = f"{server.url}{path}"
        assert_401(httpx.request(method, url))
        assert_401(httpx.request(method, url, headers=auth("wrong-key")))
        assert_401(httpx.request(method, url, headers=auth(KEY + "x")))
        assert_401(httpx.request(method, url, headers={"Authorization": KEY}))  # no scheme
        assert_401(httpx.request(method, url, headers={"Authorization": f"Basic {KEY}"}))
        assert httpx.request(method, url, headers=auth()).status_code != 401, (method, path)


def test_routes_answer_with_the_key(server):
    with httpx.Client(base_url=server.url, headers=auth()) as c:
        assert c.get("/v1/model").json()["config"]["n_layer"] == 2
        assert c.post("/v1/tokenize", json={"text": "hi"}).json()["count"] == 2
        generated = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 3, "utf8": "any"}).json()
        assert generated["usage"]["completion_tokens"] == 3
        png = c.post("/v1/attention", json={"text": "hi", "format": "png", "layers": [0], "heads": [0]})
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        assert c.get("/docs").status_code == 200
    lower = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"bearer {KEY}"})
    assert lower.status_code == 200  # the scheme is case-insensitive


def test_openai_client_with_and_without_the_key(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0) as good:
        done = good.completions.create(model="tiny", prompt="hi", max_tokens=2, extra_body={"utf8": "any"})
        assert done.usage.completion_tokens == 2
    with (
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-key", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as e,
    ):
        bad.models.list()
    assert e.value.body["code"] == "invalid_api_key"


def test_the_key_is_never_logged(server):
    httpx.get(f"{server.url}/v1/model")
    httpx.get(f"{server.url}/v1/model", headers=auth("wrong-key"))
    httpx.get(f"{server.url}/v1/model", headers=auth())
    log = server.log.read_text()
    assert "401 GET /v1/model" in log  # rejections are logged (the server logs at debug level here)
    assert KEY not in log


def test_bearer_token_parsing():
    assert bearer_token([(b"authorization", b"Bearer abc")]) == "abc"
    assert bearer_token([(b"authorization", b"BEARER  abc ")]) == "abc"
    assert bearer_token([(b"authorization", b"Basic abc")]) is None
    assert bearer_token([(b"authorization", b"Bearer ")]) is None
    assert bearer_token([(b"host", b"x")]) is None
