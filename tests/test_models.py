"""Several models in one server: a real server process over a folder of two checkpoints, the `model` field of
both APIs, /v1/models, /metrics, and the settings' forms of a list of checkpoints."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest

from model import TinyLLM, checkpoint
from model.checkpoint import CheckpointError
from server.config import Settings
from server.models import find_checkpoints
from server.process import running_server
from support import assert_envelope, sse_events, start_fails, tiny_model

PROMPT = "Grüße, "


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A folder of two checkpoints: "beta" (2 heads) and "alpha" (4 heads, other weights); sorted, alpha is first."""
    root = tmp_path_factory.mktemp("zoo")
    checkpoint.save(root / "beta", tiny_model(seed=1), training={"note": "beta"})
    checkpoint.save(root / "alpha", tiny_model(seed=2, n_head=4), training={"note": "alpha"})
    (root / "notes").mkdir()  # a folder that is no checkpoint is passed over
    return root


@pytest.fixture(scope="module")
def server(zoo):
    with running_server(zoo, "--max-batch", "4") as srv:
        yield srv


@pytest.fixture(scope="module")
def llms(zoo):
    return {name: TinyLLM.load(zoo / name, device="cpu", dtype="float32") for name in ("alpha", "beta")}


def post(server, path, **body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def greedy(llm: TinyLLM, n: int) -> str:
    return llm.generate(PROMPT, max_new_tokens=n, temperature=0).text


def test_every_model_is_listed_and_healthy(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = httpx.get(server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["alpha", "beta"]
    assert all(m["max_model_len"] == 64 for m in models)
    assert httpx.get(server.url + "/v1/models/beta").json()["id"] == "beta"


def test_v1_model_describes_the_one_asked_for_or_the_first(server):
    first = httpx.get(server.url + "/v1/model").json()
    assert first["model"] == "alpha" and first["config"]["n_head"] == 4 and first["training"]["note"] == "alpha"
    beta = httpx.get(server.url + "/v1/model", params={"model": "beta"}).json()
    assert beta["model"] == "beta" and beta["config"]["n_head"] == 2 and beta["checkpoint"].endswith("beta")


def test_generate_runs_the_model_it_names(server, llms):
    for name, llm in llms.items():
        out = post(server, "/v1/generate", model=name, prompt=PROMPT, max_new_tokens=24, temperature=0).json()
        assert out["model"] == name and out["text"] == greedy(llm, 24), name
    default = post(server, "/v1/generate", prompt=PROMPT, max_new_tokens=24, temperature=0).json()
    assert default["model"] == "alpha" and default["text"] == greedy(llms["alpha"], 24)
    assert greedy(llms["alpha"], 24) != greedy(llms["beta"], 24), "the two models must differ for this test"


def test_completions_run_the_model_they_name(server, llms):
    out = post(server, "/v1/completions", model="beta", prompt=PROMPT, max_tokens=16, temperature=0).json()
    assert out["model"] == "beta" and out["choices"][0]["text"] == greedy(llms["beta"], 16)


def test_attention_and_summary_of_the_model_named(server, llms):
    for name, llm in llms.items():
        out = post(server, "/v1/attention", model=name, text=PROMPT).json()
        assert out["model"] == name
        np.testing.assert_allclose(np.array(out["attention"]), llm.attention(PROMPT).numpy(), atol=1e-5)
        summary = post(server, "/v1/attention", model=name, text=PROMPT, format="summary").json()
        assert len(summary["labels"][0]) == llm.config.n_head


def test_both_models_stream_at_once(server, llms):
    """Each model has its own engine: two streams, one per model, interleave and give each model's text."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        body = {"prompt": PROMPT, "max_new_tokens": 40, "temperature": 0, "stream": True}
        with (
            c.stream("POST", "/v1/generate", json={**body, "model": "alpha"}) as a,
            c.stream("POST", "/v1/generate", json={**body, "model": "beta"}) as b,
        ):
            events = {"alpha": sse_events(a.iter_lines()), "beta": sse_events(b.iter_lines())}
    for name, streamed in events.items():
        assert streamed[-1]["text"] == greedy(llms[name], 40), name


def test_unknown_model_is_a_404_naming_it(server):
    r = post(server, "/v1/generate", model="gamma", prompt="x")
    message = assert_envelope(r, 404, "model")["message"]
    assert "`gamma`" in message and "`alpha`, `beta`" in message
    assert_envelope(post(server, "/v1/attention", model="gamma", text="x"), 404, "model")
    assert_envelope(post(server, "/v1/tokenize", model="gamma", text="x"), 404, "model")
    assert_envelope(httpx.get(server.url + "/v1/model", params={"model": "gamma"}), 404, "model")
    for r in (
        post(server, "/v1/completions", model="gamma", prompt="x"),
        httpx.get(server.url + "/v1/models/gamma"),
        post(server, "/tokenize", model="gamma", prompt="x"),
    ):
        assert assert_envelope(r, 404, "model", openai=True)["code"] == "model_not_found"


def test_metrics_have_one_sample_per_model(server):
    post(server, "/v1/generate", model="beta", prompt="m", max_new_tokens=5)
    text = httpx.get(server.url + "/metrics").text
    for name in ("alpha", "beta"):
        assert f'tinyllm_kv_slots_free{{model="{name}"}} 4.0' in text
    assert 'tinyllm_tokens_generated_total{model="beta"}' in text


# ------------------------------------------------------------------ the list of checkpoints


def test_checkpoint_flag_is_repeatable_and_takes_folders(zoo, tmp_path):
    shutil.copytree(zoo / "beta", tmp_path / "gamma")
    settings = Settings(
        _env_file=None, _cli_parse_args=["--checkpoint", str(tmp_path / "gamma"), "--checkpoint", str(zoo)]
    )
    assert [p.name for p in find_checkpoints(settings.checkpoint)] == ["gamma", "alpha", "beta"]
    comma = Settings(_env_file=None, _cli_parse_args=["--checkpoint", f"{zoo / 'beta'},{zoo / 'alpha'}"])
    assert [p.name for p in find_checkpoints(comma.checkpoint)] == ["beta", "alpha"]


@pytest.mark.parametrize("form", ["json", "comma", "one"])
def test_checkpoint_environment_variable(zoo, monkeypatch, form):
    value = {
        "json": f'["{zoo / "beta"}", "{zoo / "alpha"}"]',
        "comma": f"{zoo / 'beta'}, {zoo / 'alpha'}",
        "one": str(zoo / "beta"),
    }[form]
    monkeypatch.setenv("TINYLLM_CHECKPOINT", value)
    names = [p.name for p in find_checkpoints(Settings(_env_file=None).checkpoint)]
    assert names == (["beta"] if form == "one" else ["beta", "alpha"])


def test_two_checkpoints_with_one_name_fail_at_start_up(zoo, tmp_path):
    shutil.copytree(zoo / "beta", tmp_path / "beta")
    with pytest.raises(CheckpointError, match="'beta'"):
        find_checkpoints([zoo, tmp_path / "beta"])
    line = start_fails(zoo, "--checkpoint", str(tmp_path / "beta"))
    assert line.startswith("tinyllm-serve: error: two checkpoints") and "rename one" in line


def test_a_folder_without_checkpoints_fails_at_start_up(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    line = start_fails(tmp_path / "empty")
    assert "neither a checkpoint" in line and "empty" in line


def test_a_checkpoint_named_twice_is_served_once_where_it_came_first(zoo):
    assert [p.name for p in find_checkpoints([zoo / "beta", zoo])] == ["beta", "alpha"]
