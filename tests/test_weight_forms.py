"""Weight forms: float32 exactly as stored, bfloat16 and int8 close to it; which forms a checkpoint may serve
(its quality record), and which it serves by default (a setting of the checkpoint, never a timing)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model import checkpoint, form_quality, torch_step, weight_forms
from model.config import ModelConfig
from model.quantize import int8_group, quantize_groups
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import Sequence
from support import random_ids, sharp_model, tiny_model


def test_the_float32_decoder_is_the_model():
    model = sharp_model()
    ids = random_ids(2, 40)
    with torch.inference_mode():
        expected, _ = model(ids)
        got, _ = torch_step.decoder(model, "float32")(ids)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_int8_quantizes_each_group_of_inputs_with_its_own_scale():
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    w[0, :32] *= 100  # one loud group must not cost the quiet ones their precision
    q, scale = quantize_groups(w, 32)
    assert q.shape == (48, 2, 32) and scale.shape == (48, 2, 1)
    assert torch.equal(q, q.round()) and q.abs().max() <= 127
    assert (q.abs().amax(-1) == 127).all(), "each group uses the full range"
    dequantized = (q * scale).flatten(-2)
    assert ((dequantized - w).abs() <= scale.repeat_interleave(32, dim=1).squeeze(-1) / 2 + 1e-6).all()
    assert (dequantized[0, 32:] - w[0, 32:]).abs().max() < 0.02, "the quiet half keeps its own scale"
    zero_q, zero_scale = quantize_groups(torch.zeros(2, 32), 32)
    assert (zero_q == 0).all() and (zero_scale == 0).all(), "an all-zero group is zeros, not NaN"


def test_int8_linear_multiplies_quantized_activations_by_quantized_weights():
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    linear = weight_forms.Int8Linear(w, 32)

    def dequantized(t):
        q, scale = quantize_groups(t, 32)
        return (q * scale).flatten(-2)

    torch.testing.assert_close(linear(x), dequantized(x) @ dequantized(w).t())
    assert (linear(x) - x @ w.t()).abs().max() < 0.5, "near the float product (64 terms of rounding each)"
    bf16 = weight_forms.BFloat16Linear(w)
    torch.testing.assert_close(bf16(x), F.linear(x.bfloat16(), w.bfloat16()).float())


def test_the_int8_group_is_64_or_32_inputs():
    assert int8_group(ModelConfig(d_model=384, n_head=6, mlp_hidden=1024)) == 64
    assert int8_group(ModelConfig(d_model=32, n_head=2, mlp_hidden=64)) == 32
    assert int8_group(ModelConfig(d_model=48, n_head=2, mlp_hidden=64)) is None


@pytest.mark.parametrize("form", ["bfloat16", "int8"])
def test_reduced_forms_stay_close_and_decode_through_the_runner(form):
    model = tiny_model(seed=1)
    ids = random_ids(1, 30)
    with torch.inference_mode():
        exact = F.log_softmax(model(ids)[0], dim=-1)
        reduced = F.log_softmax(torch_step.decoder(model, form)(ids)[0], dim=-1)
    assert (reduced - exact).abs().max() < 0.05
    runner = Runner(model, max_batch=2, form=form)
    seq = Sequence(ids[0, :20].tolist(), 20, SamplingParams(temperature=0, valid_utf8=False))
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
    assert form_quality.validation_loss(lambda x: model(x)[0], data, 64) == pytest.approx(expected, rel=1e-5)


def test_the_record_decides_which_forms_may_serve(tmp_path):
    ck = tmp_path / "ck"
    checkpoint.save(ck, tiny_model(), training={})
    assert form_quality.allowed(ck)[0] == ["float32"], "unmeasured: float32 only"
    losses = {"float32": 1.5, "bfloat16": 1.5004, "int8": 1.52}  # int8 costs 0.02 nats/byte: too much
    (ck / form_quality.QUALITY_FILE).write_text(json.dumps({"val_loss": losses}))
    forms, why = form_quality.allowed(ck)
    assert forms == ["float32", "bfloat16"] and "int8 +0.0200" in why


def test_a_checkpoint_serves_int8_by_default_only_when_its_record_allows_it(tmp_path):
    ck = tmp_path / "ck"
    checkpoint.save(ck, tiny_model(), training={})
    assert form_quality.default_form(ck)[0] == "float32", "unmeasured: float32"
    (ck / form_quality.QUALITY_FILE).write_text(json.dumps({"val_loss": {"float32": 1.0, "int8": 1.001}}))
    assert form_quality.default_form(ck)[0] == "int8"
    (ck / form_quality.QUALITY_FILE).write_text(json.dumps({"val_loss": {"float32": 1.0, "int8": 1.02}}))
    assert form_quality.default_form(ck)[0] == "float32", "int8 costs too much here"


@pytest.mark.native
def test_the_command_records_each_forms_validation_loss(tmp_path):
    ck = tmp_path / "ck"
    checkpoint.save(ck, tiny_model(seed=3), training={})
    data = tmp_path / "text.txt"
    data.write_bytes(bytes(random_ids(1, 64 * 20 + 1, seed=5)[0].tolist()))
    form_quality.main([str(ck), "--data", str(data)])
    record = json.loads((ck / form_quality.QUALITY_FILE).read_text())
    assert set(record["val_loss"]) == set(weight_forms.FORMS)
    assert record["measured_in"] == {"float32": "native step", "int8": "native step", "bfloat16": "torch step"}
    assert record["data"]["held_out_bytes"] == math.ceil(len(data.read_bytes()) * 0.1)
    assert all(abs(v - record["val_loss"]["float32"]) < 0.05 for v in record["val_loss"].values())
