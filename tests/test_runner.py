"""The runner: prefill and decode against the KV cache equal the model's full forward pass, whatever the
prompt length, the row, the batch or the row moves; scoring and attention rows, too. Each generation test runs
in both steps: the native one (model/native/) and the torch one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.kv_cache import KVCache
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence
from model.tokenizer import tokenizer
from support import TINY_CONFIG, random_ids, require_native, sharp_model

TEXT = "Hé! naïve café — 日本語 🙂 ok\n"  # 1-, 2-, 3- and 4-byte characters
GREEDY = SamplingParams(temperature=0, valid_utf8=False)  # random bytes: the cache, not UTF-8, is tested


@pytest.fixture(params=[True, False], ids=["native", "torch"])
def native(request) -> bool:
    """Whether the runner generates in the native step (else the torch step). The native case never runs the torch
    step in its place: it skips without the step, or fails under TINYLLM_REQUIRE_NATIVE=1."""
    if request.param:
        require_native()
    return request.param


def full_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        logits, _ = model(ids)
    return F.log_softmax(logits.float(), dim=-1)


def cached_logprobs(runner: Runner, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Prefill each row's first prompt_len bytes into its cache row, then decode the rest in batched steps,
    feeding the true next byte (teacher forcing): log-probs at positions prompt_len-1..T-1, (B, T', vocab)."""
    B, T = ids.shape
    seqs = [Sequence(ids[b, :prompt_len].tolist(), prompt_len, GREEDY) for b in range(B)]
    steps = [[runner.prefill(seq, row=b, start=0, end=prompt_len) for b, seq in enumerate(seqs)]]
    for i in range(prompt_len, T):
        for b, seq in enumerate(seqs):
            seq.tokens.append(int(ids[b, i]))
        steps.append(runner.decode(seqs))
    return torch.stack([torch.stack([out.logprobs for out in step]) for step in steps], dim=1)


@pytest.mark.parametrize("prompt_len", [1, 2, 7, 31, 63, 64])
def test_cache_matches_full_forward(prompt_len, native):
    """Prefill `prompt_len` bytes, decode the rest one byte at a time up to the full context."""
    model = sharp_model()
    runner = Runner(model, max_batch=1, native_step=native)
    ids = random_ids(1, 64, seed=prompt_len)
    expected = full_logprobs(model, ids)[:, prompt_len - 1 :]
    torch.testing.assert_close(cached_logprobs(runner, ids, prompt_len), expected, rtol=1e-5, atol=1e-5)


def test_cache_matches_full_forward_on_multibyte_text(native):
    model = sharp_model()
    runner = Runner(model, max_batch=1, native_step=native)
    ids = torch.tensor([tokenizer.encode(TEXT * 2)[:64]])
    # prompts ending inside a multi-byte character too: bytes are tokens, the cache must not care
    for prompt_len in (3, 4, 5, 20):
        expected = full_logprobs(model, ids)[:, prompt_len - 1 :]
        torch.testing.assert_close(cached_logprobs(runner, ids, prompt_len), expected, rtol=1e-5, atol=1e-5)


def test_chunked_prefill_equals_one_prefill(native):
    model = sharp_model()
    runner = Runner(model, max_batch=1, native_step=native)
    ids = random_ids(1, 40, seed=3)[0].tolist()
    whole = runner.prefill(Sequence(ids, len(ids), GREEDY), row=0, start=0, end=len(ids))
    seq = Sequence(ids, len(ids), GREEDY)
    assert runner.prefill(seq, row=1, start=0, end=16) is None, "no token before the prompt's end"
    assert runner.prefill(seq, row=1, start=16, end=33) is None
    chunked = runner.prefill(seq, row=1, start=33, end=40)
    assert chunked.token == whole.token
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, rtol=1e-5, atol=1e-5)


def test_rows_at_different_positions_in_a_batch_match_their_own_full_forward(native):
    """Three rows at their own positions decode together, and must not disturb a prompt waiting in the prefill
    row, which then moves in and joins."""
    model = sharp_model()
    runner = Runner(model, max_batch=4, native_step=native)
    assert runner.prefill_row == 4
    lengths = [5, 19, 11, 8]
    rows = [random_ids(1, n + 8, seed=n)[0] for n in lengths]  # each row's prompt, then 8 more bytes
    seqs = [Sequence(r[:n].tolist(), n, GREEDY) for r, n in zip(rows, lengths)]
    outs = [[runner.prefill(seq, row=b, start=0, end=n)] for b, (seq, n) in enumerate(zip(seqs[:3], lengths))]
    outs.append([runner.prefill(seqs[3], row=runner.prefill_row, start=0, end=lengths[3])])
    for k in range(4):  # rows 0..2 only: a padded step
        for b in range(3):
            seqs[b].tokens.append(int(rows[b][lengths[b] + k]))
        for b, out in enumerate(runner.decode(seqs[:3])):
            outs[b].append(out)
    runner.move(runner.prefill_row, 3, lengths[3])
    for k in range(4):  # all four rows: row 3 catches up with its own positions
        for b in range(4):
            seqs[b].tokens.append(int(rows[b][lengths[b] + (k + 4 if b < 3 else k)]))
        for b, out in enumerate(runner.decode(seqs)):
            outs[b].append(out)
    for b, (r, n) in enumerate(zip(rows, lengths)):
        expected = full_logprobs(model, r.unsqueeze(0))[0, n - 1 : n - 1 + len(outs[b])]
        got = torch.stack([out.logprobs for out in outs[b]])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"row {b}: {m}")  # noqa: B023 (called here)


def test_cache_attention_rows_match_full_attention(native):
    model = sharp_model()
    runner = Runner(model, max_batch=1, native_step=native)
    ids = random_ids(1, 20)[0].tolist()
    with torch.inference_mode():
        _, full = model(torch.tensor([ids]), need_weights=True)
    layers, heads = [0, 1], [1]
    seq = Sequence(ids[:12], 12, GREEDY, attention=(layers, heads))
    first = runner.prefill(seq, row=0, start=0, end=12)
    seq.tokens.append(ids[12])
    step = runner.decode([seq])[0]
    for out, query in ((first, 11), (step, 12)):
        assert len(out.attention) == len(layers)
        for layer, rows in zip(layers, out.attention):
            assert rows.shape == (len(heads), query + 1), "over the keys so far, no further"
            torch.testing.assert_close(rows, full[layer][0, heads, query, : query + 1], rtol=1e-5, atol=1e-6)


def test_score_is_the_full_forward_log_softmax():
    model = sharp_model()
    runner = Runner(model, max_batch=1)
    ids = random_ids(1, 30, seed=5)[0].tolist()
    expected = full_logprobs(model, torch.tensor([ids]))[0]
    scored = runner.score(ids, top_n=3)
    assert scored[0] == (ids[0], None, None), "the first byte has no context to be scored in"
    for t in range(1, len(ids)):
        byte, logprob, top = scored[t]
        assert byte == ids[t]
        assert logprob == pytest.approx(float(expected[t - 1, ids[t]]), abs=1e-5)
        values, indices = expected[t - 1].topk(3)
        assert [i for i, _ in top] == indices.tolist()


def test_cache_is_written_in_place_and_never_reallocated(native):
    model = sharp_model()
    runner = Runner(model, max_batch=2, native_step=native)

    def buffers():
        return [(t.data_ptr(), t.shape) for t in runner.cache.k + runner.cache.v]

    before = buffers()
    cached_logprobs(runner, random_ids(2, 40), 16)
    assert buffers() == before
    cfg = model.config
    k = torch.stack(runner.cache.k)
    assert k.shape == (cfg.n_layer, 3, cfg.n_head, 64, cfg.head_dim)  # 2 rows + the prefill row
    assert k[:, :2, :, :40].abs().sum() > 0, "the cache was written"
    assert k[:, :2, :, 40:].abs().sum() == 0, "nothing past the last position was written"
    assert k[:, 2].abs().sum() == 0, "the prefill row was not used"


def test_a_cache_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="1..64"):
        KVCache(TINY_CONFIG, rows=1, dtype=torch.float32, device="cpu", max_len=65)


def test_a_decode_step_takes_one_to_max_batch_sequences(native):
    runner = Runner(sharp_model(), max_batch=2, native_step=native)
    seq = Sequence([1, 2], 2, GREEDY)
    with pytest.raises(ValueError, match="1..2"):
        runner.decode([seq, seq, seq])
    with pytest.raises(ValueError, match="1..2"):
        runner.decode([])


# ------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.03)], ids=["float32", "bfloat16"])
def test_gpu_cache_and_attention_paths_agree(dtype, tol):
    model = sharp_model().to("cuda", dtype)
    ids = random_ids(2, 64).cuda()
    with torch.inference_mode():
        fused, _ = model(ids)
        explicit, attn = model(ids, need_weights=True)
        ref, _ = sharp_model()(ids.cpu())  # the same weights in float32 on the CPU
    ref = ref.to(fused.device)
    torch.testing.assert_close(fused.float(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(explicit.float(), fused.float(), rtol=tol, atol=tol)
    for layer in attn:
        torch.testing.assert_close(layer.sum(-1), torch.ones_like(layer.sum(-1)), rtol=1e-3, atol=1e-3)
        assert (layer.triu(1) == 0).all()
    runner = Runner(model, max_batch=2)
    ptr = runner.cache.k[0].data_ptr()
    expected = F.log_softmax(fused.float(), dim=-1).cpu()
    for prompt_len in (1, 17, 64):
        cached = cached_logprobs(runner, ids, prompt_len)
        torch.testing.assert_close(cached, expected[:, prompt_len - 1 :], rtol=tol, atol=tol)
    assert runner.cache.k[0].data_ptr() == ptr
