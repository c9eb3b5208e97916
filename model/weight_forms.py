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
`weight_forms.json` records each form's validation loss (written by `tinyllm-weight-forms`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import platform
import statistics
import time
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


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ (q * scale[:, None]).T, in bfloat16 inside, x's dtype outside. Compiled, the product stays ATen's
    int8 kernel (an extern call in Inductor's code, without a Python op around it: 15% faster at batch 1)."""
    shape = x.shape
    y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), q, scale)
    return y.reshape(*shape[:-1], q.shape[0]).to(x.dtype)


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


# ---------------------------------------------------------------- speed: the fastest allowed form on this machine


BATCHED = 16  # the batch a busy server's steps are measured at; batch 1 is measured too


@torch.inference_mode()
def matmul_seconds(
    model: Transformer, forms: list[str], batch: int = 1, rounds: int = 7, steps: int = 5
) -> dict[str, float]:
    """Per form, the time of one decode step's weight matmuls at `batch` sequences (every linear map once, in
    order).

    The rest of a step (norms, rotary embeddings, attention, sampling) is the same in every form, so this is
    what tells them apart. Forms alternate within each round; the median of the rounds is kept.
    """
    x_model = torch.randn(batch, 1, model.config.d_model)
    x_hidden = torch.randn(batch, 1, model.config.mlp_hidden)
    linears = {}
    for form in forms:
        dec = decoder(model, form)
        linears[form] = [
            (m, x_hidden if m is layer.mlp.down_proj else x_model)
            for layer in dec.layers
            for m in (layer.self_attn.qkv, layer.self_attn.o_proj, layer.mlp.gate_up, layer.mlp.down_proj)
        ]
        linears[form].append((dec.lm_head, x_model))
    times: dict[str, list[float]] = {form: [] for form in forms}
    for _ in range(rounds):
        for form in forms:
            start = time.perf_counter()
            for _ in range(steps):
                for linear, x in linears[form]:
                    linear(x)
            times[form].append((time.perf_counter() - start) / steps)
    return {form: statistics.median(t) for form, t in times.items()}


def choose(
    model: Transformer, allowed_forms: list[str], cache_key: str, cache_dir: Path | None
) -> tuple[str, str, str]:
    """The fastest of allowed_forms on this machine for a step of one sequence and for a step of many (BATCHED),
    and why. Which is fastest can differ: a kernel that reads fewer bytes wins at batch 1, one that computes
    faster at larger batches. The measurement is kept in cache_dir (per checkpoint, machine, torch version and
    thread count), so a restart chooses the same forms at once."""
    key = hashlib.sha256(
        f"{cache_key}|{platform.processor()}|{cpu_name()}|{torch.__version__}|{torch.get_num_threads()}|"
        f"{sorted(allowed_forms)}|{BATCHED}".encode()
    ).hexdigest()[:16]
    record = cache_dir / "weight_forms" / f"{key}.json" if cache_dir else None
    if record is not None and record.exists():
        times = json.loads(record.read_text())
        how = f"measured before (kept in {record})"
    else:
        times = {str(b): matmul_seconds(model, allowed_forms, batch=b) for b in (1, BATCHED)}
        how = "measured at start-up"
        if record is not None:
            with contextlib.suppress(OSError):  # a read-only cache only costs the next start a measurement
                record.parent.mkdir(parents=True, exist_ok=True)
                record.write_text(json.dumps(times, indent=2) + "\n")
    single, batched = times["1"], times[str(BATCHED)]

    def shown(t: dict[str, float]) -> str:
        return ", ".join(f"{form} {t[form] * 1e3:.2f} ms" for form in sorted(t, key=t.get))

    return (
        min(single, key=single.get),
        min(batched, key=batched.get),
        f"fastest of the allowed forms, step matmuls {how}: batch 1: {shown(single)}; batch {BATCHED}: "
        f"{shown(batched)}",
    )


def select(model: Transformer, path, requested: str, cache_dir: Path | None) -> tuple[str, str, str]:
    """The weight forms to serve checkpoint `path` in, for steps of one sequence and of several, and why:
    `requested` for both if it names one, else ("auto") the fastest on this machine of those its quality
    record allows. On a GPU the model's own dtype serves."""
    if model.lm_head.weight.device.type != "cpu":
        why = f"weights as loaded ({str(model.lm_head.weight.dtype).removeprefix('torch.')}) on the GPU"
        return "float32", "float32", why
    if requested != "auto":
        return requested, requested, "as asked (--dtype)"
    forms, why = allowed(path)
    if len(forms) == 1:
        return forms[0], forms[0], why
    weights = checkpoint.resolve(path) / checkpoint.WEIGHTS
    stat = weights.stat()
    single, batched, how = choose(model, forms, f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}", cache_dir)
    return single, batched, f"{how}; {why}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


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
    losses = {form: validation_loss(decoder(model, form), held_out, model.config.context_length) for form in FORMS}
    for form, loss in losses.items():
        print(f"{form:9} {loss:.5f} nats/byte ({loss / math.log(2):.4f} bits), {loss - losses['float32']:+.5f}")
    record = {
        "val_loss": {form: round(loss, 6) for form, loss in losses.items()},
        "data": {"file": args.data.name, "bytes": len(data), "held_out_bytes": len(held_out)},
        "windows": f"all non-overlapping {model.config.context_length}-byte windows of the held-out part",
    }
    (checkpoint.resolve(args.checkpoint) / QUALITY_FILE).write_text(json.dumps(record, indent=2) + "\n")
