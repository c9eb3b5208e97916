"""Weight forms: how a decode step stores and multiplies its weight matrices.

A batch-1 decode step reads every weight once per token, so on a CPU its speed is the speed of reading the
weights: fewer bytes per weight is faster, if a kernel for them exists. The forms:

- `float32`: the checkpoint's weights as stored.
- `int8`: weights in int8 with a float32 scale per group of 64 inputs (32 for narrow models), and each matmul's
  input quantized the same way as it runs: integer dot products (llama.cpp's Q8_0, llama2.c's runq). A
  quarter of float32's bytes.
- `bfloat16`: weights in bfloat16, each matmul's input cast to bfloat16 and back (the torch step only: it
  is CUDA's default).

The native step (model/native/) serves float32 and int8 on a CPU; the torch step (model.torch_step) serves every
form, with the classes below. Norms, rotary embeddings, attention and the KV cache stay float32 in all forms.
Prompt scoring and attention maps keep the exact float32 model. Which form a checkpoint serves in, and which it may,
is model.form_quality's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.quantize import quantize_groups

FORMS = ("float32", "bfloat16", "int8")


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
