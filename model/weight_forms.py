"""Weight forms: how the decode step stores and multiplies its weight matrices.

A batch-1 decode step reads every weight once per token, so on a CPU its speed is the speed of reading the
weights: fewer bytes per weight is faster, if a kernel for them exists. The forms:

- `float32`: the checkpoint's weights as stored (F.linear).
- `bfloat16`: weights in bfloat16 (half the bytes; oneDNN/AMX kernels where the CPU has them); activations,
  norms, attention and the KV cache stay float32, each matmul's input is cast to bfloat16 and back.
- `int8`: weights as int8 with one float scale per output channel (a quarter of the bytes), multiplied by
  `torch._weight_int8pack_mm`; activations stay float32 as above.

Only the decode step uses a form (the runner's `decoder`); prefill, prompt scoring and attention maps keep
the exact float32 model. In the decoder, Q/K/V and gate/up are fused into one matmul each. Which form is
fastest depends on the machine (the runner measures); which are allowed depends on quality: a checkpoint's
`weight_forms.json` records each form's validation loss (written by `python -m model.weight_forms`).
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

FORMS = ("float32", "bfloat16", "int8")
QUALITY_FILE = "weight_forms.json"
MAX_LOSS_INCREASE = 0.01  # nats per byte a reduced form may cost and still serve by default


class BFloat16Linear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)


@torch.library.custom_op("tinyllm::int8_linear", mutates_args=())
def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ (q * scale[:, None]).T, in bfloat16 inside, x's dtype outside. One opaque op for torch.compile,
    which would otherwise rewrite the int8 matmul into something slower."""
    shape = x.shape
    y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), q, scale)
    return y.reshape(*shape[:-1], q.shape[0]).to(x.dtype)


@int8_linear.register_fake
def _(x, q, scale):
    return x.new_empty(*x.shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    """Symmetric per-output-channel int8: weight ≈ q * scale[:, None], q in [-127, 127]."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.q, self.scale)


def linear_in(form: str, weight: torch.Tensor) -> nn.Module:
    """One linear map (weight (out, in)) in a form."""
    if form == "float32":
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
        return linear
    if form == "bfloat16":
        return BFloat16Linear(weight)
    if form == "int8":
        return Int8Linear(weight)
    raise ValueError(f"unknown weight form {form!r}; one of {', '.join(FORMS)}")


@torch.no_grad()
def decoder(model: Transformer, form: str) -> Transformer:
    """A copy of model for the decode step: Q/K/V and gate/up fused, every linear map in `form`."""
    out = copy.copy(model)  # shares the norms, the embedding table and the rotary tables
    out._modules = dict(model._modules)
    out.layers = nn.ModuleList()
    for layer in model.layers:
        block = copy.copy(layer)
        block._modules = dict(layer._modules)
        attn, mlp = copy.copy(layer.self_attn), copy.copy(layer.mlp)
        attn._modules, mlp._modules = {}, {}
        attn.qkv = linear_in(form, torch.cat([attn_w(layer, n) for n in "qkv"]))
        attn.o_proj = linear_in(form, layer.self_attn.o_proj.weight)
        mlp.gate_up = linear_in(form, torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]))
        mlp.down_proj = linear_in(form, layer.mlp.down_proj.weight)
        block.self_attn, block.mlp = attn, mlp
        out.layers.append(block)
    out.lm_head = linear_in(form, model.lm_head.weight)
    return out.eval()


def attn_w(layer, name: str) -> torch.Tensor:
    return getattr(layer.self_attn, f"{name}_proj").weight


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
def validation_loss(model: Transformer, data: bytes, context: int, batch: int = 16) -> float:
    """Mean cross-entropy (nats per byte) over all non-overlapping context windows of data."""
    ids = torch.tensor(list(data), dtype=torch.long)
    n = (len(ids) - 1) // context
    windows = ids[: n * context + 1]
    x_all = windows[:-1].view(n, context)
    y_all = windows[1:].view(n, context)
    total = 0.0
    for i in range(0, n, batch):
        logits, _ = model(x_all[i : i + batch])
        total += F.cross_entropy(logits.float().flatten(0, 1), y_all[i : i + batch].flatten(), reduction="sum").item()
    return total / (n * context)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m model.weight_forms",
        description="Measure each weight form's validation loss and record it in the checkpoint (weight_forms.json).",
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the text whose held-out part is measured")
    p.add_argument("--held-out", type=float, default=0.1, help="the last fraction of --data that is held out")
    args = p.parse_args(argv)
    model = checkpoint.load_model(args.checkpoint)
    data = args.data.read_bytes()
    held_out = data[math.floor(len(data) * (1 - args.held_out)) :]
    losses = {form: validation_loss(decoder(model, form), held_out, model.config.context_length) for form in FORMS}
    for form, loss in losses.items():
        print(f"{form:9} {loss:.5f} nats/byte ({loss / math.log(2):.4f} bits), {loss - losses['float32']:+.5f}")
    record = {
        "val_loss": {form: round(loss, 6) for form, loss in losses.items()},
        "data": {"file": args.data.name, "bytes": len(data), "held_out_bytes": len(held_out)},
        "windows": f"all non-overlapping {model.config.context_length}-byte windows of the held-out part",
    }
    (checkpoint.resolve(args.checkpoint) / QUALITY_FILE).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
