"""Every checkpoint the model class accepts is served: by the native step, or by the torch step with the reason
(`why_not` refuses what step.cpp's constructor refuses, first). A kernel path can be pinned, and one this CPU
cannot run stops the start with a clear error."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import torch

from model import TinyLLM, checkpoint
from model.config import ModelConfig
from model.kv_cache import KVCache
from model.model import Transformer
from model.native import step as native
from server.process import ROOT, running_server
from support import start_fails, tiny_model

WIDE_HEAD = ModelConfig(context_length=32, n_layer=1, n_head=1, d_model=520, mlp_hidden=64)  # head_dim 520


def wide_head_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(WIDE_HEAD).eval()


@pytest.fixture(scope="module")
def wide_head_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "wide"
    checkpoint.save(path, wide_head_model(), training={"note": "random weights, one head of 520"})
    return path


@pytest.mark.native
@pytest.mark.parametrize(
    "model, form, reason",
    [
        (wide_head_model(), "float32", "even head_dim of at most 512 (this model's is 520)"),
        (tiny_model().to(torch.bfloat16), "float32", "needs a float32 model (this one is bfloat16)"),
        (tiny_model(), "bfloat16", "has no bfloat16 form"),
    ],
    ids=["head_dim_520", "bfloat16_model", "bfloat16_form"],
)
def test_why_not_refuses_what_the_constructor_refuses(model, form, reason, monkeypatch):
    """What why_not refuses, step.cpp refuses too: at construction, or (a bfloat16 model, whose weights and RoPE
    tables the constructor takes as float32) at the first step into the runner's cache, in the model's dtype."""
    assert reason in native.why_not(model, form)
    monkeypatch.setattr(native, "why_not", lambda *args: None)  # past the Python check, into step.cpp's
    with pytest.raises(RuntimeError):
        step = native.NativeStep(model, form)
        step.prefill([1, 2], 0, 0, KVCache(model.config, 1, model.lm_head.weight.dtype, "cpu"), True, False)


@pytest.mark.native
def test_a_model_the_step_takes_is_not_refused():
    assert native.why_not(tiny_model(), "float32") is None and native.why_not(tiny_model(), "int8") is None
    limit = ModelConfig(context_length=16, n_layer=1, n_head=1, d_model=512, mlp_hidden=64)
    assert native.why_not(Transformer(limit), "float32") is None
    assert native.NativeStep(Transformer(limit), "float32").kernels in native.KERNELS


def test_a_head_dim_over_512_is_served_by_the_torch_step_which_says_why(wide_head_checkpoint):
    with running_server(wide_head_checkpoint) as srv:
        step = httpx.get(f"{srv.url}/v1/model").json()["decode_step"]
        assert step["native"] is False
        assert "head_dim of at most 512 (this model's is 520)" in step["why_not_native"]
        r = httpx.post(f"{srv.url}/v1/generate", json={"prompt": "Hi", "max_new_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_training_a_head_dim_over_512_runs_past_its_evaluations(tmp_path):
    """The evaluation's sample runs through a runner: it takes the torch step instead of crashing."""
    data = tmp_path / "data.txt"
    data.write_bytes(b"To be, or not to be, that is the question. " * 40)
    args = ["--n-layer", "1", "--n-head", "1", "--d-model", "520", "--mlp-hidden", "64", "--context-length", "16"]
    args += ["--batch-size", "2", "--max-steps", "2", "--eval-every", "1", "--eval-windows", "2"]
    args += ["--sample-bytes", "8", "--device", "cpu", "--data", str(data), "--out", str(tmp_path / "ck")]
    result = subprocess.run(
        [sys.executable, "-m", "model.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint.load_training(tmp_path / "ck")["step"] == 2


def test_a_bfloat16_model_on_the_cpu_generates_in_the_torch_step(tiny_checkpoint):
    llm = TinyLLM.load(tiny_checkpoint, device="cpu", dtype="bfloat16", form="float32")
    out = llm.generate("Hi", max_new_tokens=6, temperature=0, utf8="any")
    assert len(out.tokens) == 6
    assert llm.runner.why_not_native is not None and "needs a float32 model" in llm.runner.why_not_native


@pytest.mark.native
@pytest.mark.parametrize("kernels", native.KERNELS)
def test_a_pinned_kernel_path_runs_in_the_python_api(tiny_checkpoint, kernels):
    if kernels not in native.kernels_here():
        with pytest.raises(ValueError, match=f"this CPU cannot run the {kernels} kernels"):
            TinyLLM.load(tiny_checkpoint, device="cpu", form="float32", kernels=kernels)
        return
    llm = TinyLLM.load(tiny_checkpoint, device="cpu", form="float32", kernels=kernels)
    assert llm.runner.describe()["step"] == f"native ({kernels} kernels)"


def test_unknown_kernels_are_refused():
    with pytest.raises(ValueError, match="unknown kernels 'avx9'"):
        native.check_kernels("avx9")


@pytest.mark.native
def test_the_server_serves_the_pinned_kernel_path(app_client, tiny_checkpoint):
    with app_client(tiny_checkpoint, kernels="scalar") as client:
        assert client.get("/v1/model").json()["decode_step"]["step"] == "native (scalar kernels)"


@pytest.mark.native
def test_a_kernel_path_this_cpu_lacks_stops_the_server(tiny_checkpoint):
    missing = [k for k in native.KERNELS if k not in native.kernels_here()]
    if not missing:
        pytest.skip("this CPU runs every kernel path")
    line = start_fails(tiny_checkpoint, "--kernels", missing[0])
    assert f"--kernels {missing[0]}: this CPU cannot run the {missing[0]} kernels" in line


def test_a_pinned_kernel_path_without_the_step_stops_the_server(tiny_checkpoint, tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['model.native._step'] = None\n")
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--checkpoint", str(tiny_checkpoint), "--port", "0", "--kernels", "scalar"],
        cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--kernels scalar: the scalar kernels were asked for, but the native step is not built" in proc.stderr
