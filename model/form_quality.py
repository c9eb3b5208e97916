"""Which weight form a checkpoint serves in, and which it may: quality measured as validation loss.

Which form a checkpoint serves in is a setting, not a measurement of speed (default_form): the same on every
machine, so that a request's bytes are too. Which forms it may serve in depends on quality: its
`weight_forms.json` records each form's validation loss (written by `tinyllm-weight-forms`, measured in the step
that serves the form: model.step).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from model import checkpoint, json_file, step
from model.quantize import int8_group
from model.weight_forms import FORMS

QUALITY_FILE = "weight_forms.json"
MAX_LOSS_INCREASE = 0.01  # nats per byte a reduced form may cost and still serve by default


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
    losses = json_file.loads(f.read_text())["val_loss"]
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


def form_logits(model, form: str):
    """The function from windows to logits that serves `form` on this machine (model.step.choose), and which step
    that is. The record is measured with what serves."""
    chosen, why_not_native = step.choose(model, form)
    return chosen.logits, ("native step" if why_not_native is None else "torch step")


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
    (checkpoint.resolve(args.checkpoint) / QUALITY_FILE).write_text(json_file.dumps(record, indent=2) + "\n")
