"""Weight forms: how a decode step stores and multiplies its weight matrices.

A batch-1 decode step reads every weight once per token, so on a CPU its speed is the speed of reading the
weights: fewer bytes per weight is faster, if a kernel for them exists. The forms:

- `float32`: the checkpoint's weights as stored.
- `int8`: weights in int8 with a float32 scale per group of 64 inputs (32 for narrow models), and each matmul's
  input quantized the same way as it runs: integer dot products (llama.cpp's Q8_0, llama2.c's runq). A
  quarter of float32's bytes.
- `bfloat16`: weights in bfloat16, each matmul's input cast to bfloat16 and back (the torch step only: it
  is CUDA's default).

The native step (model/native/) serves float32 and int8 on a CPU; the torch step (model.runner) serves every
form, with the classes below. Norms, rotary embeddings, attention and the KV cache stay float32 in all forms.
Prompt scoring and attention maps keep the exact float32 model.

Which form a checkpoint serves in is a setting, not a measurement of speed (default_form): the same on every
machine, so that a request's bytes are too. Which forms it may serve in depends on quality: its
`weight_forms.json` records each form's validation loss (written by `tinyllm-weight-forms`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import checkpoint
from model.model import Transformer
from model.native import step as native
from model.quantize import int8_group, quantize_groups

FORMS = ("float32", "bfloat16", "int8")
QUALITY_FILE = "weight_forms.json"
MAX_LOSS_INCREASE = 0.01  # nats per byte a reduced form may cost and still serve by default


class BFloat16Linear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


class Int8Linear(nn.Module):
    """The int8 form's arithmetic in torch: weights and activations quantized per group (quantize_groups), their
    products summed in float32. The native step computes the same products in integers (exact) and applies the
    scales per group; the two differ only in float rounding. This is the form's reference and its fallback."""

    def __init__(self, weight: torch.Tensor, group: int):
        super().__init__()
        q, scale = quantize_groups(weight, group)
        self.group = group
        self.register_buffer("weight", (q * scale).flatten(-2).contiguous())  # dequantized (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_groups(x, self.group)
        return F.linear((q * scale).flatten(-2).to(x.dtype), self.weight.to(x.dtype))


def linear_in(form: str, weight: torch.Tensor, group: int | None = None) -> nn.Module:
    """One linear map (weight (out, in)) in a form."""
    if form == "float32":
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
        return linear
    if form == "bfloat16":
        return BFloat16Linear(weight)
    if form == "int8":
        if group is None:
            raise ValueError("the int8 form needs d_model and mlp_hidden divisible by 32")
        return Int8Linear(weight, group)
    raise ValueError(f"unknown weight form {form!r}; one of {', '.join(FORMS)}")


@torch.no_grad()
def decoder(model: Transformer, form: str) -> Transformer:
    """A copy of model for the torch decode step: Q/K/V and gate/up fused, every linear map in `form`."""
    group = int8_group(model.config)
    out = copy.copy(model)  # shares the norms, the embedding table and the rotary tables
    out._modules = dict(model._modules)
    out.layers = nn.ModuleList()
    for layer in model.layers:
        block = copy.copy(layer)
        block._modules = dict(layer._modules)
        attn, mlp = copy.copy(layer.self_attn), copy.copy(layer.mlp)
        attn._modules, mlp._modules = {}, {}
        attn.qkv = linear_in(form, torch.cat([attn_w(layer, n) for n in "qkv"]), group)
        attn.o_proj = linear_in(form, layer.self_attn.o_proj.weight, group)
        mlp.gate_up = linear_in(form, torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]), group)
        mlp.down_proj = linear_in(form, layer.mlp.down_proj.weight, group)
        block.self_attn, block.mlp = attn, mlp
        out.layers.append(block)
    out.lm_head = linear_in(form, model.lm_head.weight, group)
    return out.eval()


def attn_w(layer, name: str) -> torch.Tensor:
    return getattr(layer.self_attn, f"{name}_proj").weight


def default_form(path) -> tuple[str, str]:
    """The form a checkpoint serves in on a CPU unless --dtype says otherwise, and why: int8 when its quality
    record allows it, else float32. A setting of the checkpoint, never a timing: every machine serves a
    checkpoint in the same form, so the same request gives the same bytes on each."""
    forms, why = allowed(path)
    return ("int8" if "int8" in forms else "float32"), why


# ---------------------------------------------------------------- quality: validation loss per form


def allowed(path) -> tuple[list[str], str]:
    """The forms a checkpoint may serve by default, and why: those within MAX_LOSS_INCREASE of float32's
    validation loss in its weight_forms.json; float32 alone when there is no such record."""
    f = checkpoint.resolve(path) / QUALITY_FILE
    if not f.exists():
        return ["float32"], f"no {QUALITY_FILE} in the checkpoint: reduced precision is unmeasured"
    losses = json.loads(f.read_text())["val_loss"]
    base = losses["float32"]
    ok = [form for form in FORMS if form in losses and losses[form] - base <= MAX_LOSS_INCREASE]
    costs = ", ".join(f"{form} {losses[form] - base:+.4f}" for form in FORMS if form in losses and form != "float32")
    return ok, f"validation loss vs float32 (nats/byte): {costs}; allowed within +{MAX_LOSS_INCREASE}"


@torch.inference_mode()
def validation_loss(logits_of, data: bytes, context: int, batch: int = 16) -> float:
    """Mean cross-entropy (nats per byte) over all non-overlapping context windows of data; logits_of maps
    windows (B, context) to logits (B, context, vocab)."""
    ids = torch.tensor(list(data), dtype=torch.long)
    n = (len(ids) - 1) // context
    windows = ids[: n * context + 1]
    x_all = windows[:-1].view(n, context)
    y_all = windows[1:].view(n, context)
    total = 0.0
    for i in range(0, n, batch):
        logits = logits_of(x_all[i : i + batch])
        total += F.cross_entropy(logits.float().flatten(0, 1), y_all[i : i + batch].flatten(), reduction="sum").item()
    return total / (n * context)


def form_logits(model: Transformer, form: str):
    """The function from windows to logits that serves `form` on this machine: the native step's where it has the
    form, else the torch decoder's. The record is measured with what serves."""
    if native.why_not(model, form) is None:
        return native.NativeStep(model, form).logits, "native step"
    dec = decoder(model, form)
    return (lambda x: dec(x)[0]), "torch step"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="tinyllm-weight-forms",
        description="Measure each weight form's validation loss and record it in the checkpoint (weight_forms.json).",
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the text whose held-out part is measured")
    p.add_argument("--held-out", type=float, default=0.1, help="the last fraction of --data that is held out")
    args = p.parse_args(argv)
    model = checkpoint.load_model(args.checkpoint)
    data = args.data.read_bytes()
    held_out = data[math.floor(len(data) * (1 - args.held_out)) :]
    forms = [f for f in FORMS if f != "int8" or int8_group(model.config) is not None]
    losses, measured_in = {}, {}
    for form in forms:
        logits_of, measured_in[form] = form_logits(model, form)
        losses[form] = validation_loss(logits_of, held_out, model.config.context_length, batch=4)
    for form, loss in losses.items():
        print(
            f"{form:9} {loss:.5f} nats/byte ({loss / math.log(2):.4f} bits), {loss - losses['float32']:+.5f} "
            f"({measured_in[form]})"
        )
    record = {
        "val_loss": {form: round(loss, 6) for form, loss in losses.items()},
        "measured_in": measured_in,
        "data": {"file": args.data.name, "bytes": len(data), "held_out_bytes": len(held_out)},
        "windows": f"all non-overlapping {model.config.context_length}-byte windows of the held-out part",
    }
    (checkpoint.resolve(args.checkpoint) / QUALITY_FILE).write_text(json.dumps(record, indent=2) + "\n")
