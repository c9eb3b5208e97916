"""The compiled decode step (torch.compile): the same tokens as the eager step, two graphs (batch 1, and every
other batch size) and no recompilation however the batch changes; a live server switches to it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
import torch
from torch._dynamo.utils import counters

from model import TinyLLM
from model.runner import Runner, Sequence
from model.sampling import SamplingParams
from server.process import ROOT, running_server
from support import random_ids, sharp_model

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    """One compiled-code cache for this module's compilations (the live server's start reuses it)."""
    return tmp_path_factory.mktemp("inductor")


def test_compiled_and_eager_steps_agree_and_nothing_recompiles(inductor_cache, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    model = sharp_model()
    compiled = Runner(model, max_batch=8, form="float32", compile=True)
    compiled.start_compiling().join()
    assert compiled.compiled_in is not None, "the compiled step is in use"
    graphs = counters["stats"]["unique_graphs"]
    eager = Runner(model, max_batch=8, form="float32")
    for n in (1, 3, 2, 8, 5, 1, 7):  # batch sizes change from step to step, as requests come and go
        seqs = [Sequence(random_ids(1, 5 + 3 * i, seed=i)[0].tolist(), 5 + 3 * i, GREEDY) for i in range(n)]
        for runner in (compiled, eager):
            for row, seq in enumerate(seqs):
                runner.prefill(seq, row, 0, len(seq.tokens))
        for a, b in zip(compiled.decode(seqs), eager.decode(seqs)):
            assert a.token == b.token
            torch.testing.assert_close(a.logprobs, b.logprobs, rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs, "a batch size recompiled the step"


def test_a_live_server_serves_the_compiled_step(tiny_checkpoint, inductor_cache):
    env = {"TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)}
    with running_server(tiny_checkpoint, "--compile", env=env, timeout=300) as srv:
        deadline = time.monotonic() + 300
        while not (step := httpx.get(f"{srv.url}/v1/model").json()["decode_step"])["compiled"]:
            assert time.monotonic() < deadline, "the compiled step never came"
            time.sleep(0.5)
        assert step["weight_form"] == step["batch_weight_form"] == "float32", "no weight_forms.json: float32 only"
        assert step["compiled_in_s"] > 0 and step["compile_error"] is None
        r = httpx.post(f"{srv.url}/v1/generate", json={"prompt": "Hello", "max_new_tokens": 40, "temperature": 0})
        expected = TinyLLM.load(tiny_checkpoint, device="cpu").generate("Hello", max_new_tokens=40, temperature=0)
        assert r.json()["text"] == expected.text


def test_without_a_cpp_compiler_the_eager_step_serves_and_says_why(tmp_path):
    """A process whose PATH has no C++ compiler (as in the slim Docker image): no compiled step, one line why."""
    script = """
import sys
sys.path.insert(0, "tests")
from model.runner import Runner, Sequence
from model.sampling import SamplingParams
from support import random_ids, sharp_model
model = sharp_model()
runner = Runner(model, max_batch=2, form="float32", compile=True)
runner.start_compiling().join()
assert runner.compiled_in is None and "no C++ compiler" in runner.compile_error, runner.compile_error

def two_tokens(r):
    seq = Sequence(random_ids(1, 9, seed=3)[0].tolist(), 9, SamplingParams(temperature=0))
    seq.tokens.append(r.prefill(seq, 0, 0, 9).token)
    return seq.tokens[-1], r.decode([seq])[0].token

assert two_tokens(runner) == two_tokens(Runner(model, max_batch=2, form="float32"))
print("eager served")
"""
    env = {**os.environ, "PATH": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "eager served" in out.stdout, out.stderr[-2000:]
