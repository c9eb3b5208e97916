"""The native step (model/native/): the exact model's logits in float32, int8 within its quality bound, the
same bits whatever the batch, the threads, the prefill chunks or the kernels (AVX2 or scalar), and a KV cache
the torch paths read and write alike. Without the extension the server serves the torch step and says why."""

from __future__ import annotations

import httpx
import pytest
import torch

from model import checkpoint, form_quality
from model.generate import generate
from model.kv_cache import CacheSlots, KVCache
from model.native import step as native
from model.runner import Runner
from model.sampling import SamplingParams
from server.process import ROOT, running_server
from support import random_ids, sharp_model, tiny_model

pytestmark = pytest.mark.native  # fails instead of skipping under TINYLLM_REQUIRE_NATIVE=1 (conftest.py)

SHAKESPEARE = ROOT / "checkpoints" / "shakespeare"
PROMPT = b"ROMEO:\nBut soft, what light through yonder window breaks?\n"


@pytest.fixture(scope="module")
def shakespeare():
    return checkpoint.load_model(SHAKESPEARE)


def decode_entries(step, cache, seqs: list[list[int]]) -> torch.Tensor:
    """One native decode step: sequence b's last token at its position, in cache row b; logits (B, vocab)."""
    n = len(seqs)
    tokens = torch.tensor([s[-1] for s in seqs])
    positions = torch.tensor([len(s) - 1 for s in seqs])
    return step.forward(tokens, torch.arange(n), positions, cache, logits_for=torch.arange(n))[0]


@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("where", ["start", "end"])
def test_the_float32_step_gives_the_exact_models_logits(shakespeare, batch, where):
    """Prompts prefilled by the exact torch model into cache rows, then one native step for the whole batch:
    its logits are the full forward pass's at every row's own position (the cache is shared by both paths)."""
    ctx = shakespeare.config.context_length
    lengths = [1 + (b * 5) % 16 if where == "start" else ctx - 1 - (b * 7) % 24 for b in range(batch)]
    seqs = [random_ids(1, n, seed=b)[0].tolist() for b, n in enumerate(lengths)]
    cache = KVCache(shakespeare.config, batch, torch.float32, "cpu")
    with torch.inference_mode():
        for b, s in enumerate(seqs):
            if len(s) > 1:  # the prompt but its last byte, by the torch path
                slots = CacheSlots(b, torch.arange(len(s) - 1).unsqueeze(0))
                shakespeare(torch.tensor([s[:-1]]), cache=cache, slots=slots)
        expected = torch.stack([shakespeare(torch.tensor([s]))[0][0, -1] for s in seqs])
    got = decode_entries(native.NativeStep(shakespeare, "float32"), cache, seqs)
    assert (got - expected).abs().max() <= 1e-4


def test_float32_greedy_bytes_equal_the_torch_references(shakespeare):
    greedy = SamplingParams(temperature=0)
    ours = [s.token for s in generate(Runner(shakespeare, form="float32"), list(PROMPT), 256, greedy)]
    reference = [s.token for s in generate(Runner(shakespeare, native_step=False), list(PROMPT), 256, greedy)]
    assert ours == reference


def test_the_int8_steps_held_out_loss_is_within_the_bound(shakespeare):
    """Held-out text the model never saw (its own card's prose and samples): int8 costs at most the bound, and the
    bundled record was measured in the native step."""
    text = (SHAKESPEARE / "README.md").read_bytes()[: 4 * 512 + 1]
    exact = form_quality.validation_loss(lambda x: shakespeare(x)[0], text, 512)
    int8 = form_quality.validation_loss(native.NativeStep(shakespeare, "int8").logits, text, 512)
    assert abs(int8 - exact) <= form_quality.MAX_LOSS_INCREASE
    record = form_quality.allowed(SHAKESPEARE)
    assert "int8" in record[0], record[1]


@pytest.mark.parametrize("form", native.FORMS)
def test_a_sequence_gets_the_same_bits_alone_in_any_batch_and_on_any_threads(form):
    """Its logits and the keys and values it writes, bitwise: alone on one thread, then among 15 neighbours at
    other positions on two threads (and the other way round)."""
    model = sharp_model()
    step = native.NativeStep(model, form)
    seq = random_ids(1, 40, seed=1)[0].tolist()
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads, batch in ((1, 1), (2, 16), (2, 1), (1, 16)):
            torch.set_num_threads(n_threads)
            cache = KVCache(model.config, 16, torch.float32, "cpu")
            others = [random_ids(1, 5 + 3 * b, seed=100 + b)[0].tolist() for b in range(1, batch)]
            for b, s in enumerate([seq] + others):  # prefill all but the last byte, then one step for all
                n = len(s) - 1
                step.forward(torch.tensor(s[:n]), torch.full((n,), b), torch.arange(n), cache, torch.arange(0))
            logits = decode_entries(step, cache, [seq] + others)[0]
            results.append((logits, [t[0, :, :40].clone() for t in cache.k + cache.v]))
    finally:
        torch.set_num_threads(threads)
    for logits, kv in results[1:]:
        assert torch.equal(logits, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(kv, results[0][1]))


@pytest.mark.parametrize("form", native.FORMS)
def test_prefill_chunks_do_not_change_a_bit(form):
    model = sharp_model()
    step = native.NativeStep(model, form)
    ids = random_ids(1, 50, seed=2)[0]
    caches, logits = [], []
    for chunk in (50, 16, 7, 1):
        cache = KVCache(model.config, 1, torch.float32, "cpu")
        out = []
        for start in range(0, 50, chunk):
            end = min(start + chunk, 50)
            n = end - start
            out.append(step.forward(ids[start:end], torch.zeros(n, dtype=torch.long), torch.arange(start, end), cache,
                                    torch.arange(n))[0])  # fmt: skip
        caches.append(cache)
        logits.append(torch.cat(out))
    for cache, got in zip(caches[1:], logits[1:]):
        assert torch.equal(got, logits[0])
        assert all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, caches[0].k + caches[0].v))


@pytest.mark.parametrize("form", native.FORMS)
def test_every_kernel_path_computes_the_same_bits(form, record_property):
    """Scalar, AVX2 and VNNI where this CPU has them, on a model with 64-wide groups and odd batch sizes. The paths
    compared are reported (a junit property, and printed: pytest -rA)."""
    model = tiny_model(seed=4, d_model=64, mlp_hidden=128, n_head=4)
    ids = random_ids(3, 45, seed=3)
    paths = native.kernels_here()
    assert "scalar" in paths
    record_property("kernel_paths", ",".join(paths))
    print(f"kernel paths compared ({form}): {', '.join(paths)}")
    if paths == ["scalar"]:
        pytest.skip("this CPU runs only the scalar kernels: no other path to compare them with")
    steps = {k: native.NativeStep(model, form, kernels=k) for k in paths}
    assert [s.kernels for s in steps.values()] == paths
    logits = {k: s.logits(ids) for k, s in steps.items()}
    for k in paths:
        assert torch.equal(logits[k], logits["scalar"]), k
    assert native.NativeStep(model, form).kernels == paths[0], "auto takes the fastest"


def test_native_and_torch_paths_share_the_cache_both_ways(shakespeare):
    """A sequence prefilled natively and continued by the torch model, and the other way round: the logits are the
    full forward pass's."""
    ids = list(PROMPT)
    n = len(ids) - 8
    with torch.inference_mode():
        expected = shakespeare(torch.tensor([ids]))[0][0, n:]
    step = native.NativeStep(shakespeare, "float32")
    # native prefill, torch decode
    cache = KVCache(shakespeare.config, 1, torch.float32, "cpu")
    step.forward(torch.tensor(ids[:n]), torch.zeros(n, dtype=torch.long), torch.arange(n), cache, torch.arange(0))
    with torch.inference_mode():
        got = torch.cat(
            [shakespeare(torch.tensor([[ids[t]]]), cache=cache, slots=CacheSlots(0, torch.tensor([[t]])))[0][0]
             for t in range(n, len(ids))]
        )  # fmt: skip
    assert (got - expected).abs().max() <= 1e-4
    # torch prefill, native decode
    cache = KVCache(shakespeare.config, 1, torch.float32, "cpu")
    with torch.inference_mode():
        shakespeare(torch.tensor([ids[:n]]), cache=cache, slots=CacheSlots(0, torch.arange(n).unsqueeze(0)))
    got = torch.cat([decode_entries(step, cache, [ids[: t + 1]]) for t in range(n, len(ids))])
    assert (got - expected).abs().max() <= 1e-4


def test_attention_rows_from_the_step_are_the_models(shakespeare):
    ids = torch.tensor([list(PROMPT)])
    T = ids.shape[1]
    with torch.inference_mode():
        _, attn = shakespeare(ids, need_weights=True)
    step = native.NativeStep(shakespeare, "float32")
    cache = KVCache(shakespeare.config, 1, torch.float32, "cpu")
    _, rows = step.forward(ids[0], torch.zeros(T, dtype=torch.long), torch.arange(T), cache, torch.arange(0),
                           attention_for=torch.tensor([5, T - 1]), n_keys=T)  # fmt: skip
    assert rows.shape == (2, shakespeare.config.n_layer, shakespeare.config.n_head, T)
    expected = torch.stack([a[0][:, [5, T - 1], :] for a in attn]).permute(2, 0, 1, 3)  # (2, n_layer, nh, T)
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-4)
    assert (rows[0, :, :, 6:] == 0).all(), "nothing beyond the query's own position"
    torch.testing.assert_close(rows.sum(-1), torch.ones(2, *rows.shape[1:3]))


def test_without_the_extension_the_torch_step_serves_and_says_why(tiny_checkpoint, tmp_path):
    """As if the extension had failed to build: importing it fails, the server starts, generates, and its
    /v1/model says which step serves, why, and that it is not batch-invariant."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['model.native._step'] = None\n")
    with running_server(tiny_checkpoint, env={"PYTHONPATH": str(tmp_path)}) as srv:
        step = httpx.get(f"{srv.url}/v1/model").json()["decode_step"]
        assert step["native"] is False and "native step is not built" in step["why_not_native"]
        assert step["batch_invariant"] is False and "torch step serves" in step["why_not_batch_invariant"]
        r = httpx.post(f"{srv.url}/v1/generate", json={"prompt": "Hi", "max_new_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    assert "not batch-invariant" in srv.log.read_text()
