"""Same request, same bytes: with default settings a request's tokens and logprobs are bitwise the same alone,
all at once with 31 others, in a shuffled staggered arrival, beside neighbours that ask for attention rows, on 1
or 2 threads and in another server process; the system_fingerprint says when they may differ. Float32 weights
reproduce the Hugging Face export's greedy text. (vLLM's CI compares batch size 1 and N the same way.)"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
import torch

from server.process import ROOT, running_server

pytestmark = pytest.mark.native  # fails instead of skipping under TINYLLM_REQUIRE_NATIVE=1 (conftest.py)

SHAKESPEARE = ROOT / "checkpoints" / "shakespeare"
LINES = ["ROMEO:", "JULIET:", "First Citizen:", "KING RICHARD III:", "To be, or not", "O Romeo, Romeo!",
         "Now is the winter", "What light"]  # fmt: skip
BODIES = [
    {"prompt": f"{LINES[i % 8]}\n" * (1 + i % 3), "max_new_tokens": 200, "logprobs": 1}
    | ({"temperature": 0} if i < 16 else {"temperature": 0.8, "seed": 1000 + i})
    for i in range(32)
]


def generate_all(url: str, bodies: list[dict], stagger: float = 0.0, seed: int = 0) -> list[dict]:
    """All bodies at once (or, with stagger, in a shuffled order, each up to `stagger` seconds after the last):
    the responses in the bodies' order."""

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            order = list(range(len(bodies)))
            tasks = {}
            if stagger:
                random.Random(seed).shuffle(order)
            for i in order:
                tasks[i] = asyncio.create_task(c.post("/v1/generate", json=bodies[i]))
                if stagger:
                    await asyncio.sleep(random.Random(seed + i).uniform(0, stagger))
            return [await tasks[i] for i in range(len(bodies))]

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:1]
    return [r.json() for r in responses]


def alone(url: str, bodies: list[dict]) -> list[dict]:
    return [httpx.post(f"{url}/v1/generate", json=b, timeout=300).json() for b in bodies]


def outputs(responses: list[dict]) -> list[list[tuple[int, float]]]:
    """Each response's (token, logprob) pairs: compared as they are, bitwise."""
    return [[(t["id"], t["logprob"]) for t in r["tokens"]] for r in responses]


@pytest.fixture(scope="module")
def default_server():
    with running_server(SHAKESPEARE, "--max-batch", "32", timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(default_server) -> list[dict]:
    """Each request alone, one after the other."""
    return alone(default_server.url, BODIES)


def test_all_at_once_and_staggered_give_what_each_gives_alone(default_server, reference):
    assert httpx.get(f"{default_server.url}/v1/model").json()["decode_step"]["batch_invariant"] is True
    assert outputs(generate_all(default_server.url, BODIES)) == outputs(reference)
    assert outputs(generate_all(default_server.url, BODIES, stagger=0.05, seed=1)) == outputs(reference)
    assert len({r["text"] for r in reference}) > 8, "different prompts and seeds give different texts"


def test_neighbours_asking_for_attention_rows_change_nothing_and_get_the_same_bytes(default_server, reference):
    """Every third request also asks for attention rows (the step returns them): the bytes of all are as alone."""
    bodies = [b | {"attention": {"layers": [0, 5], "heads": [1]}} if i % 3 == 0 else b for i, b in enumerate(BODIES)]
    got = generate_all(default_server.url, bodies, stagger=0.02, seed=2)
    assert outputs(got) == outputs(reference)
    assert all(len(t["attention"]) == 2 for r in got[::3] for t in r["tokens"])


def test_one_or_two_threads_and_another_process_give_the_same_bytes_and_fingerprint(default_server, reference):
    fingerprint = reference[0]["system_fingerprint"]
    assert fingerprint.startswith("fp_") and {r["system_fingerprint"] for r in reference} == {fingerprint}
    for threads in ("1", "2"):
        with running_server(SHAKESPEARE, "--max-batch", "32", "--threads", threads, timeout=120) as srv:
            got = generate_all(srv.url, BODIES[::2])
            assert outputs(got) == outputs(reference[::2]), f"--threads {threads}"
            assert {r["system_fingerprint"] for r in got} == {fingerprint}


def test_the_fingerprint_changes_with_the_weight_form_and_the_step(default_server, reference):
    body = BODIES[0] | {"stream": True}
    with httpx.stream("POST", f"{default_server.url}/v1/generate", json=body, timeout=60) as r:
        last = [line for line in r.iter_lines() if line.startswith("data: {")][-1]
    assert httpx.Response(200, content=last[6:]).json()["system_fingerprint"] == reference[0]["system_fingerprint"]
    openai = {"model": "shakespeare", "prompt": BODIES[0]["prompt"], "max_tokens": 200, "temperature": 0}
    completion = httpx.post(f"{default_server.url}/v1/completions", json=openai, timeout=60).json()
    assert completion["system_fingerprint"] == reference[0]["system_fingerprint"]
    assert completion["choices"][0]["text"] == reference[0]["text"]
    prints = {reference[0]["system_fingerprint"]}
    for flags in (("--dtype", "float32"), ("--no-native",)):
        with running_server(SHAKESPEARE, *flags, timeout=120) as srv:
            prints.add(httpx.post(f"{srv.url}/v1/generate", json=BODIES[0], timeout=60).json()["system_fingerprint"])
            info = httpx.get(f"{srv.url}/v1/model").json()
            assert info["system_fingerprint"] in prints
            assert info["decode_step"]["batch_invariant"] is (flags[0] != "--no-native")
    assert len(prints) == 3, "int8, float32 and the torch step each have their own"


def test_float32_weights_reproduce_the_hugging_face_exports_greedy_text(tmp_path):
    LlamaForCausalLM = pytest.importorskip("transformers").LlamaForCausalLM

    from model.export_hf import export

    export(SHAKESPEARE, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    prompt = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    with torch.inference_mode():
        ids = hf.generate(torch.tensor([list(prompt.encode())]), max_new_tokens=200, do_sample=False, pad_token_id=0)
    expected = ids[0, len(prompt.encode()) :].tolist()
    with running_server(SHAKESPEARE, "--dtype", "float32", timeout=120) as srv:
        body = {"prompt": prompt, "max_new_tokens": 200, "temperature": 0, "utf8": "any"}
        got = httpx.post(f"{srv.url}/v1/generate", json=body, timeout=60).json()
    assert [t["id"] for t in got["tokens"]] == expected
