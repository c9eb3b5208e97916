"""The `tinyllm` command-line client, as a subprocess against a real server that needs an API key."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from model import TinyLLM
from server.process import ROOT, free_port, running_server

KEY = "cli-test-key-0b7d"


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    with running_server(tiny_checkpoint, env={"TINYLLM_API_KEY": KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return TinyLLM.load(tiny_checkpoint, device="cpu")


def tinyllm(*args: str, url: str | None = None, key: str | None = KEY, stdin: bytes | None = None):
    """Run the CLI; stdout and stderr are decoded as UTF-8 without newline translation."""
    env = {k: v for k, v in os.environ.items() if k not in ("TINYLLM_URL", "TINYLLM_API_KEY")}
    env["PYTHONIOENCODING"] = "utf-8"
    if url:
        env["TINYLLM_URL"] = url
    if key:
        env["TINYLLM_API_KEY"] = key
    p = subprocess.run(
        [sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env, input=stdin, capture_output=True, timeout=120
    )
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def test_generate_streams_the_continuation(server, llm):
    rc, out, err = tinyllm("generate", "ROMEO:", "--max-new-tokens", "30", "--temperature", "0", url=server.url)
    assert rc == 0, err
    assert out == llm.generate("ROMEO:", max_new_tokens=30, temperature=0).text + "\n"


def test_generate_options_match_the_api(server):
    args = dict(prompt="To be", max_new_tokens=25, temperature=0.9, top_k=50, top_p=0.95, seed=7)
    expected = httpx.post(f"{server.url}/v1/generate", json=args, headers={"Authorization": f"Bearer {KEY}"}).json()
    rc, out, err = tinyllm(
        "generate",
        "-",
        "--max-new-tokens",
        "25",
        "--temperature",
        "0.9",
        "--top-k",
        "50",
        "--top-p",
        "0.95",
        "--seed",
        "7",
        "--echo",
        url=server.url,
        stdin=b"To be",
    )
    assert rc == 0, err
    assert out == "To be" + expected["text"] + "\n"


def test_generate_stop(server, llm):
    full = llm.generate("ROMEO:", max_new_tokens=30, temperature=0).text
    stop = next(ch for ch in full[1:] if ch.isascii() and ch.isprintable())
    rc, out, err = tinyllm(
        "generate", "ROMEO:", "--max-new-tokens", "30", "--temperature", "0", "--stop", stop, url=server.url
    )
    assert rc == 0, err
    assert out == full[: full.index(stop)] + "\n"


def test_attention_png_and_npy(server, llm, tmp_path):
    png, npy = tmp_path / "attn.png", tmp_path / "attn.npy"
    rc, _, err = tinyllm(
        "attention",
        "To be, or not",
        "--layer",
        "1",
        "--head",
        "1",
        "--png",
        str(png),
        "--npy",
        str(npy),
        url=server.url,
    )
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = np.load(io.BytesIO(npy.read_bytes()))
    expected = llm.attention("To be, or not")[1, 1].numpy()
    assert maps.shape == (1, 1, 13, 13) and np.allclose(maps[0, 0], expected, atol=1e-5)
    assert str(png) in err  # "wrote FILE (N bytes)" goes to stderr
    rc, _, err = tinyllm("attention", "To be", "--npy", str(npy), url=server.url)  # only --npy: every map
    assert rc == 0, err
    assert np.load(npy).shape == (2, 2, 5, 5)


def test_attention_summary_names_the_most_attended_byte(server, llm):
    rc, out, err = tinyllm("attention", "abcab", "--layer", "0", "--head", "1", url=server.url)
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.startswith("layer 0, head 1")
    expected = llm.attention("abcab")[0, 1].argmax(dim=-1).tolist()
    assert [int(row.split("->")[1].split()[0]) for row in rows] == expected


def test_model_prints_json(server):
    rc, out, err = tinyllm("model", url=server.url)
    assert rc == 0, err
    info = json.loads(out)
    assert info["config"]["n_layer"] == 2 and info["context_length"] == 64


def test_tokenize(server):
    rc, out, err = tinyllm("tokenize", "hé", url=server.url)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "3 bytes" and len(lines) == 4
    assert lines[2].split()[:3] == ["1", "195", "\\xc3"] and lines[2].endswith("chars [1, 2)")


def test_api_key_flag_and_missing_key(server):
    rc, out, err = tinyllm("--api-key", KEY, "model", url=server.url, key=None)
    assert rc == 0, err
    rc, out, err = tinyllm("model", url=server.url, key=None)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "HTTP 401" in err and "--api-key" in err


def test_server_error_is_one_line(server):
    rc, out, err = tinyllm("generate", "x", "--top-p", "2", url=server.url)
    assert rc == 1 and out == ""
    assert err.startswith("tinyllm: error: ") and err.count("\n") == 1 and "top_p" in err and "HTTP 400" in err
    rc, _, err = tinyllm("attention", "x", "--layer", "9", "--png", "never.png", url=server.url)
    assert rc == 1 and err.count("\n") == 1 and "layers" in err
    assert not (ROOT / "never.png").exists()


def test_server_down_is_one_line_and_exit_3():
    url = f"http://127.0.0.1:{free_port()}"
    rc, out, err = tinyllm("generate", "hello", url=url)
    assert rc == 3 and out == ""
    assert err.count("\n") == 1 and "cannot reach the server" in err and url in err


def test_usage_errors_exit_2():
    rc, _, err = tinyllm()
    assert rc == 2 and "usage: tinyllm" in err


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("tinyllm")
    if not script.exists():
        pytest.skip("the package is not installed with its console scripts")
    p = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "generate" in p.stdout and "TINYLLM_URL" in p.stdout
