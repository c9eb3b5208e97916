"""Hook points: named places inside the one forward pass (model.model) where a function reads or edits a tensor.

The names are TransformerLens's. Per block i (`blocks.{i}.` before each name), in the order they fire:

    hook_resid_pre        (B, T, C)        the residual stream entering the block
    attn.hook_q/k/v       (B, nh, T, hs)   queries and keys after RoPE, values (this step's, before the KV cache)
    attn.hook_attn_scores (B, nh, T, Tk)   q·kᵀ/√d_k, masked with -inf (float32)
    attn.hook_pattern     (B, nh, T, Tk)   softmax of the scores: the attention probabilities
    attn.hook_z           (B, nh, T, hs)   each head's output Σ_j w_j v_j, before W_O
    attn.hook_result      (B, T, nh, C)    each head's write into the residual stream, z·W_O,headᵀ (read only)
    hook_attn_out         (B, T, C)        the attention's write: Σ_heads result, through W_O in one product
    hook_resid_mid        (B, T, C)        the stream after attention
    hook_mlp_out          (B, T, C)        the MLP's write
    hook_resid_post       (B, T, C)        the stream leaving the block

and `hook_embed` (B, T, C), the embedding, before block 0. Layouts are the model's own ((B, nh, T, hs) for the
per-head tensors, where TransformerLens has (B, T, nh, hs)). Tk is the number of keys read: T without a cache.

A hook is fn(tensor, name) -> tensor or None: None keeps the tensor (a reader), a tensor replaces it (an editor:
zero ablation is `lambda z, name: z * mask`). Several hooks on one point run in the order they were added.
Hooking the scores or the pattern of a layer makes that layer compute attention by the explicit masked softmax
(model.model.Attention.mix) instead of the fused kernel. hook_result costs a product per head and exists only
while it is hooked; edit z to change what a head writes.

With no Hooks given, the forward pass runs none of this: one `if hooks` per point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]

BLOCK_POINTS = (
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
)
EXPLICIT_POINTS = ("attn.hook_attn_scores", "attn.hook_pattern")  # need the explicit softmax
READ_ONLY_POINTS = ("attn.hook_result",)


def point(layer: int, name: str) -> str:
    """The full name of a block's hook point: point(2, "attn.hook_z") == "blocks.2.attn.hook_z"."""
    return f"blocks.{layer}.{name}"


def names(n_layer: int) -> list[str]:
    """Every hook point of a model with n_layer blocks, in the order they fire."""
    return ["hook_embed"] + [point(i, name) for i in range(n_layer) for name in BLOCK_POINTS]


class Hooks:
    """Functions attached to hook points, for one forward pass (or several): model(ids, hooks=Hooks([...]))."""

    def __init__(self, hooks: Iterable[tuple[str, HookFn]] = ()):
        self.fns: dict[str, list[HookFn]] = {}
        self.explicit_layers: set[int] = set()
        for name, fn in hooks:
            self.add(name, fn)

    def add(self, name: str, fn: HookFn) -> Hooks:
        parts = name.split(".", 2)
        if name != "hook_embed":
            if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in BLOCK_POINTS:
                raise ValueError(f"no hook point {name!r}: hook_embed or blocks.<layer>.<one of {BLOCK_POINTS}>")
            if parts[2] in EXPLICIT_POINTS:
                self.explicit_layers.add(int(parts[1]))
        self.fns.setdefault(name, []).append(fn)
        return self

    def __contains__(self, name: str) -> bool:
        return name in self.fns

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x through the hooks at `name`, in order: each may replace it."""
        for fn in self.fns.get(name, ()):
            out = fn(x, name)
            if out is not None:
                if name.endswith(READ_ONLY_POINTS):
                    raise ValueError(f"{name} is read only: edit attn.hook_z to change what a head writes")
                x = out
        return x


def record(into: dict[str, torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> HookFn:
    """A reader that keeps transform(tensor) under the point's name in `into`."""

    def keep(x: torch.Tensor, name: str) -> None:
        into[name] = transform(x)

    return keep


@torch.inference_mode()
def run_with_cache(model, ids: torch.Tensor, points: Iterable[str] | None = None, **forward) -> tuple:
    """TransformerLens's run_with_cache: the logits of model(ids) and {name: tensor} at the points asked for (all by
    default). Keyword arguments go to the forward pass."""
    cache: dict[str, torch.Tensor] = {}
    wanted = names(model.config.n_layer) if points is None else list(points)
    logits, _ = model(ids, hooks=Hooks((name, record(cache)) for name in wanted), **forward)
    return logits, cache
