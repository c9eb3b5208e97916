"""`tinyllm explain`, `lens`, `attribute`, `ablate` and `generate --heads-off`: subprocesses against a real server,
printing what the API answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest

from model import TinyLLM
from server.process import ROOT, running_server

TEXT = "The cat sat"


def tinyllm(server, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "TINYLLM_URL": server.url, "PYTHONIOENCODING": "utf-8"}
    env.pop("TINYLLM_API_KEY", None)
    p = subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env, capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def api(server, path: str, **body) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_explain_prints_a_row_per_visible_byte(server):
    rc, out, err = tinyllm(server, "explain", TEXT, "--layer", "1", "--head", "0", "--query", "6")
    assert rc == 0, err
    expected = api(server, "/v1/attention/explain", text=TEXT, layer=1, head=0, query=6)
    rows = [re.findall(r"-?\d+\.\d+", line) for line in out.splitlines() if re.match(r"^\s+\d+\s+'", line)]
    assert len(rows) == 7  # bytes 0..6: q·k, ÷√d_k and the weight of each
    assert [float(weight) for _, _, weight in rows] == [round(w, 4) for w in expected["weights"][:7]]
    assert [float(raw) for raw, _, _ in rows] == [round(s, 3) for s in expected["raw_scores"][:7]]
    assert "bytes 7..10 come later: masked" in out and "checks (max abs difference)" in out
    rc, last, _ = tinyllm(server, "explain", TEXT, "--layer", "1", "--head", "0")  # the last byte by default
    assert rc == 0 and "query byte 10 't'" in last


def test_lens_attribute_and_ablate(server):
    rc, out, err = tinyllm(server, "lens", TEXT)
    assert rc == 0, err
    lens = api(server, "/v1/lens", text=TEXT, top_k=1)
    lines = out.splitlines()
    assert lines[0].startswith("text") and "The\u2423cat\u2423sat" in lines[0]
    assert [line.split()[0] for line in lines[1:-1]] == lens["stages"]
    assert lines[-2].endswith(f"{lens['bits_per_byte'][-1]:.3f}")

    rc, out, err = tinyllm(server, "attribute", TEXT, "--position", "10", "--target", "e", "--top", "3")
    assert rc == 0, err
    push = api(server, "/v1/attribute", text=TEXT, position=10, target=ord("e"), top=3)
    assert f"the logit of 'e' (byte 101) is {push['logit']:.4f}" in out
    assert len(out.splitlines()) == 2 + 3

    rc, out, err = tinyllm(server, "ablate", TEXT, "--heads-off", "1.1", "--heads-off", "0.0", "--ablation", "mean")
    assert rc == 0, err
    off = api(server, "/v1/ablate", text=TEXT, heads_off=[[1, 1], [0, 0]], ablation="mean")
    assert out.startswith(f"heads off: 1.1, 0.0 (mean): {off['bits_per_byte_ablated']:.4f} bits/byte")


def test_bad_heads_and_indices(server):
    rc, _, err = tinyllm(server, "ablate", TEXT, "--heads-off", "1-1")
    assert rc == 2 and "not LAYER.HEAD" in err
    rc, _, err = tinyllm(server, "explain", TEXT, "--layer", "9", "--head", "0")
    assert rc == 1 and "layer [9] out of range" in err
    rc, _, err = tinyllm(server, "ablate", TEXT, "--heads-off", "0.1", "--heads-off", "0.1")
    assert rc == 1 and "named twice" in err


def test_generate_without_heads_is_the_python_apis(server, tiny_checkpoint):
    args = (
        "generate",
        TEXT,
        "--max-new-tokens",
        "20",
        "--temperature",
        "0",
        "--heads-off",
        "1.0",
        "--heads-off",
        "0.1",
    )
    rc, out, err = tinyllm(server, *args)
    assert rc == 0, err
    llm = TinyLLM.load(tiny_checkpoint, device="cpu")
    expected = llm.generate(TEXT, max_new_tokens=20, temperature=0, heads_off=[(1, 0), (0, 1)], explain=True)
    assert out == expected.text + "\n"
    assert out != llm.generate(TEXT, max_new_tokens=20, temperature=0).text + "\n", "those heads mattered"
    body = {
        "prompt": TEXT,
        "max_new_tokens": 20,
        "temperature": 0,
        "heads_off": [[1, 0], [0, 1]],
        "explain": {"top": 3},
    }
    tokens = api(server, "/v1/generate", **body)["tokens"]
    for token, step in zip(tokens, expected.steps, strict=True):  # (another process, its own thread count)
        assert token["explain"]["logit"] == pytest.approx(step.explain.logit, abs=1e-6)
        assert [c["logit"] for c in token["explain"]["top"]] == pytest.approx(
            [c.logit for c in step.explain.top(3)], abs=1e-6
        )


# ------------------------------------------------------------------ non-ASCII labels and --model


def test_non_ascii_labels_print_as_the_server_wrote_them(server):
    text = "Hé 🙂 ok"
    rc, out, err = tinyllm(server, "attribute", text, "--position", "1")
    assert rc == 0, err
    assert out.startswith("after byte 1 '\\xc3', the logit of '\\xa9' (byte 169)"), out.splitlines()[0]
    assert "\\\\" not in out, "no doubled backslash"
    rc, out, err = tinyllm(server, "explain", text, "--layer", "0", "--head", "0", "--query", "4")
    assert rc == 0, err
    rows = re.findall(r"^\s+\d+\s+('.*?')\s+-?\d", out, re.M)
    assert rows == ["'H'", "'\\xc3'", "'\\xa9'", "' '", "'\\xf0'"]
    assert "\\\\" not in out


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_checkpoint):
    """A folder of two checkpoints: the bundled multilingual model and the tiny one (served first)."""
    root = tmp_path_factory.mktemp("two-cli")
    (root / "a-tiny").symlink_to(tiny_checkpoint)
    (root / "multilingual").symlink_to(ROOT / "checkpoints" / "multilingual")
    with running_server(root) as s:
        yield s


def test_model_option_inspects_the_named_model(two_models):
    text = "猫はマット"
    args = ("explain", text, "--layer", "1", "--head", "0", "--model", "multilingual")
    rc, out, err = tinyllm(two_models, *args)
    assert rc == 0, err
    expected = api(two_models, "/v1/attention/explain", model="multilingual", text=text, layer=1, head=0, query=14)
    assert expected["model"] == "multilingual"
    weights = [float(w) for w in re.findall(r"^\s+\d+\s+'.*?'\s+\S+\s+\S+\s+(\S+)", out, re.M)]
    assert weights == [round(w, 4) for w in expected["weights"]]
    assert "query byte 14 '\\x88'" in out and "\\\\" not in out
    default = api(two_models, "/v1/attention/explain", text=text, layer=1, head=0, query=14)
    assert default["model"] == "a-tiny" and default["weights"] != expected["weights"]
    for command in (["lens", text], ["attribute", text, "--position", "2"], ["ablate", text, "--heads-off", "1.0"]):
        rc, _, err = tinyllm(two_models, *command, "--model", "multilingual")
        assert rc == 0, err
    rc, out, err = tinyllm(two_models, "model", "--model", "multilingual")
    assert rc == 0 and '"model": "multilingual"' in out, err
    rc, _, err = tinyllm(two_models, "lens", text, "--model", "nope")
    assert rc == 1 and "nope" in err
