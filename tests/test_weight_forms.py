"""Weight forms of the decode step: float32 exactly as stored, bfloat16 and int8 close to it; which forms a
checkpoint may serve (its quality record), and the choice of the fastest (measured, kept on disk)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model import checkpoint, weight_forms
from model.runner import Runner, Sequence
from model.sampling import SamplingParams
from support import random_ids, sharp_model, tiny_model


def test_the_float32_decoder_is_the_model():
    model = sharp_model()
    ids = random_ids(2, 40)
    with torch.inference_mode():
        expected, _ = model(ids)
        got, _ = weight_forms.decoder(model, "float32")(ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_int8_is_per_channel_scaled_int8_times_bfloat16_inputs():
    w = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    linear = weight_forms.Int8Linear(w)
    assert linear.q.dtype == torch.int8 and linear.q.abs().max() == 127
    scale = linear.scale.float()[:, None]
    dequantized = linear.q.float() * scale
    # half a step of rounding, plus the scale's own rounding to bfloat16 (8 bits) over up to 127 steps
    assert ((dequantized - w).abs() <= scale / 2 + 127 * scale * 2**-8).all()
    expected = x.bfloat16().float() @ dequantized.t()
    torch.testing.assert_close(linear(x), expected, rtol=2e-2, atol=2e-2)  # bfloat16 accumulation inside
    bf16 = weight_forms.BFloat16Linear(w)
    torch.testing.assert_close(bf16(x), F.linear(x.bfloat16(), w.bfloat16()).float())


@pytest.mark.parametrize("form", ["bfloat16", "int8"])
def test_reduced_forms_stay_close_and_decode_through_the_runner(form):
    model = tiny_model(seed=1)
    ids = random_ids(1, 30)
    with torch.inference_mode():
        exact = F.log_softmax(model(ids)[0], dim=-1)
        reduced = F.log_softmax(weight_forms.decoder(model, form)(ids)[0], dim=-1)
    assert (reduced - exact).abs().max() < 0.05
    runner = Runner(model, max_batch=2, form=form)
    seq = Sequence(ids[0, :20].tolist(), 20, SamplingParams(temperature=0))
    outs = [runner.prefill(seq, 0, 0, 20)]
    for i in range(20, 30):
        seq.tokens.append(int(ids[0, i]))
        outs.append(runner.decode([seq])[0])
    got = torch.stack([o.logprobs for o in outs])
    assert (got - exact[0, 19:]).abs().max() < 0.05


def test_validation_loss_is_the_cross_entropy_of_all_windows():
    model = tiny_model(seed=2)
    data = bytes(random_ids(1, 64 * 3 + 1, seed=4)[0].tolist())
    ids = torch.tensor(list(data))
    x, y = ids[:-1].view(3, 64), ids[1:].view(3, 64)
    with torch.inference_mode():
        expected = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    assert weight_forms.validation_loss(model, data, 64) == pytest.approx(expected, rel=1e-5)


def test_the_record_decides_which_forms_may_serve(tmp_path):
    ck = tmp_path / "ck"
    checkpoint.save(ck, tiny_model(), training={})
    assert weight_forms.allowed(ck)[0] == ["float32"], "unmeasured: float32 only"
    losses = {"float32": 1.5, "bfloat16": 1.5004, "int8": 1.52}  # int8 costs 0.02 nats/byte: too much
    (ck / weight_forms.QUALITY_FILE).write_text(json.dumps({"val_loss": losses}))
    forms, why = weight_forms.allowed(ck)
    assert forms == ["float32", "bfloat16"] and "int8 +0.0200" in why


def test_auto_serves_the_fastest_allowed_forms_and_remembers_them(tmp_path):
    ck = tmp_path / "ck"
    model = tiny_model()
    checkpoint.save(ck, model, training={})
    (ck / weight_forms.QUALITY_FILE).write_text(json.dumps({"val_loss": {"float32": 1.0, "int8": 1.001}}))
    single, batched, why = weight_forms.select(model, ck, "auto", tmp_path / "cache")
    assert {single, batched} <= {"float32", "int8"} and "measured at start-up" in why
    record = json.loads(next((tmp_path / "cache" / "weight_forms").glob("*.json")).read_text())
    for batch, form in (("1", single), (str(weight_forms.BATCHED), batched)):  # the fastest of what was measured
        assert set(record[batch]) == {"float32", "int8"} and form == min(record[batch], key=record[batch].get)
    assert weight_forms.select(model, ck, "auto", tmp_path / "cache")[:2] == (single, batched)
    assert "measured before" in weight_forms.select(model, ck, "auto", tmp_path / "cache")[2]
    assert weight_forms.select(model, ck, "int8", None) == ("int8", "int8", "as asked (--dtype)")


def test_the_command_records_each_forms_validation_loss(tmp_path):
    ck = tmp_path / "ck"
    checkpoint.save(ck, tiny_model(seed=3), training={})
    data = tmp_path / "text.txt"
    data.write_bytes(bytes(random_ids(1, 64 * 20 + 1, seed=5)[0].tolist()))
    weight_forms.main([str(ck), "--data", str(data)])
    record = json.loads((ck / weight_forms.QUALITY_FILE).read_text())
    assert set(record["val_loss"]) == set(weight_forms.FORMS)
    assert record["data"]["held_out_bytes"] == math.ceil(len(data.read_bytes()) * 0.1)
    assert all(abs(v - record["val_loss"]["float32"]) < 0.05 for v in record["val_loss"].values())


def test_one_sequence_and_several_decode_in_their_own_forms():
    model = tiny_model(seed=3)
    mixed = Runner(model, max_batch=2, form="int8", batch_form="bfloat16")
    alone = {form: Runner(model, max_batch=2, form=form) for form in ("int8", "bfloat16")}
    prompts = [random_ids(1, 12, seed=s)[0].tolist() for s in (5, 6)]

    def logprobs(runner: Runner, n: int) -> torch.Tensor:
        seqs = [Sequence(list(p), 12, SamplingParams(temperature=0)) for p in prompts[:n]]
        for row, seq in enumerate(seqs):
            seq.tokens.append(runner.prefill(seq, row, 0, 12).token)
        return torch.stack([out.logprobs for out in runner.decode(seqs)])

    assert torch.equal(logprobs(mixed, 1), logprobs(alone["int8"], 1))
    assert torch.equal(logprobs(mixed, 2), logprobs(alone["bfloat16"], 2))
    assert not torch.equal(logprobs(alone["int8"], 2), logprobs(alone["bfloat16"], 2)), "the forms differ"
