"""How `tinyllm explain`, `lens`, `attribute` and `ablate` print the server's answers (pure functions of the JSON)."""

from __future__ import annotations

BAR = 30  # characters of a weight of 1


def in_column(label: str) -> str:
    """A byte's label in a one-character column: a space made visible, an escape as a dot."""
    return "\u2423" if label == " " else "\u00b7" if len(label) > 1 else label


def quoted(label: str) -> str:
    """A byte's label in quotes, as the server wrote it: '\\xe7' prints as '\xe7' (repr() would double the
    backslash of an escape the server already wrote)."""
    return f'"{label}"' if label == "'" else f"'{label}'"


def head_name(layer: int | None, head: int | None, kind: str = "head") -> str:
    return {"embedding": "embedding", "mlp": f"L{layer} MLP"}.get(kind, f"L{layer} H{head}")


def explain_table(out: dict) -> str:
    """The walkthrough: a row per byte the query may attend to (q·k, ÷√d_k, weight and a bar), then z and its write."""
    labels = [t["text"] for t in out["tokens"]]
    q = out["query"]
    lines = [
        f"layer {out['layer']}, head {out['head']}, query byte {q} {quoted(labels[q])}: "
        f"softmax(q·k / √d_k) with d_k = {out['head_dim']}, √d_k = {out['sqrt_d_k']:g}",
        f"{'byte':>10} {'q·k':>9} {'÷√d_k':>9} {'weight':>8}",
    ]
    for j in range(q + 1):
        weight = out["weights"][j]
        lines.append(
            f"{j:4d} {quoted(labels[j]):>5} {out['raw_scores'][j]:9.3f} {out['scaled_scores'][j]:9.3f} {weight:8.4f} "
            + "\u2588" * round(weight * BAR)
        )
        lines[-1] = lines[-1].rstrip()  # a weight too small for a bar leaves no trailing space
    if q + 1 < len(labels):
        lines.append(
            f"bytes {q + 1}..{len(labels) - 1} come later: masked (-inf before the softmax, null in the JSON, weight 0)"
        )
    checks = out["checks"]
    z_check = "switched off" if checks["z_vs_run"] is None else f"{checks['z_vs_run']:.1e}"
    lines += [
        f"z = Σ weight·v: {len(out['z'])} numbers; " + write_line(out),
        f"checks (max abs difference): weights vs /v1/attention {checks['weights_vs_attention']:.1e}, "
        f"z vs the run {z_check}, Σ heads' writes + input vs residual {checks['writes_plus_input_vs_residual']:.1e}",
    ]
    return "\n".join(lines)


def write_line(out: dict) -> str:
    """What the head adds to the residual stream, honestly: nothing of z·W_O when it is switched off."""
    norms = f"norm {out['write_norm']:.3f} (the stream before this block: {out['block_input_norm']:.3f})"
    if not out["switched_off"]:
        return f"its write z·W_O into the residual stream has {norms}"
    instead = "zeros" if out["ablation"] == "zero" else "its mean over the text's positions (later bytes included)"
    return f"switched off in this run: its z·W_O ({norms}) is not added; {instead} replaced z"


def lens_table(out: dict) -> str:
    """Per stage, the most likely next byte after each byte of the text (under it), and the stage's bits per byte."""
    width = max(map(len, out["stages"]))
    text = "".join(in_column(t["text"]) for t in out["tokens"])
    lines = [f"{'text':{width}}  {text}  bits/byte"]
    labels = out["byte_labels"]
    for stage, top, bits in zip(out["stages"], out["top_ids"], out["bits_per_byte"]):
        said = "".join(in_column(labels[ids[0]]) for ids in top)
        lines.append(f"{stage:{width}}  {said}  {'' if bits is None else f'{bits:.3f}'}")
    return "\n".join(lines) + "\n(each row: the byte the model would say next after each byte of the text)"


def attribution_lines(out: dict) -> str:
    position, labels = out["position"], [t["text"] for t in out["tokens"]]
    lines = [
        f"after byte {position} {quoted(labels[position])}, "
        f"the logit of {quoted(out['target_text'])} (byte {out['target']}) is "
        f"{out['logit']:.4f} = Σ pushes {out['total']:.4f} + residual error {out['residual_error']:.1e} "
        f"(the final norm's scale here: {out['norm_scale']:.4f})",
        "largest pushes:",
    ]
    lines += [f"  {head_name(c['layer'], c['head'], c['kind']):<10} {c['logit']:+.4f}" for c in out["top"]]
    return "\n".join(lines)


def ablation_lines(out: dict, hardest: int = 5) -> str:
    names = ", ".join(f"{layer}.{head}" for layer, head in out["heads_off"]) or "none"
    labels = [t["text"] for t in out["tokens"]]
    lines = [
        f"heads off: {names} ({out['ablation']}): {out['bits_per_byte_ablated']:.4f} bits/byte, against "
        f"{out['bits_per_byte']:.4f} with every head: {out['change_bits_per_byte']:+.4f} bits/byte"
    ]
    changes = [
        (after - before, i)
        for i, (before, after) in enumerate(zip(out["loss_bits"], out["loss_bits_ablated"]))
        if before is not None
    ]
    worst = [(d, i) for d, i in sorted(changes, reverse=True)[:hardest] if d > 0]
    if worst:
        lines.append(
            "bytes that got hardest: " + ", ".join(f"{quoted(labels[i])} at {i} {d:+.2f} bits" for d, i in worst)
        )
    return "\n".join(lines)
