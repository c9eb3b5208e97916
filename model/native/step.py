"""The native forward step (step.cpp, built at install time): the model for a set of entries in one call.

An entry is (token, cache row, position): a decode step has one per sequence, a prefill chunk one per prompt
byte of one sequence. The call runs every layer for all entries at once (each weight row is read once for
all of them), writes their keys and values into the runner's KV cache, and returns the logits of the entries
asked for. It releases the GIL, splits its work between torch's threads by output rows, and computes every
entry's numbers from that entry alone, in a fixed order: a request's bytes do not depend on its neighbours,
the thread count, or which kernel path ran (kernels.h states the contract).

Weight forms it serves (model.weight_forms): float32, and int8: weights in int8 with a float32 scale per group
of 64 (or 32) inputs, activations quantized to int8 per group at each matmul, integer dot products.
"""

from __future__ import annotations

import torch

from model.kv_cache import KVCache
from model.model import Transformer
from model.native import sources
from model.quantize import int8_group, quantize_groups

FORMS = ("float32", "int8")
KERNELS = ("vnni", "avx2", "scalar")  # the kernel paths (model/native/kernels.h), fastest first
MAX_HEAD_DIM = 512  # step.cpp's rope() works in a buffer of this many floats


def stale_reason(module) -> str | None:
    """Why a loaded binary is not the one built from the sources on disk, or None when it is (or when there are no
    sources to compare with: an installed wheel). A failed rebuild can leave an old binary behind; it would serve
    the old arithmetic under the old fingerprint."""
    current = sources.source_hash()
    built = getattr(module, "SOURCE_HASH", "")  # binaries from before the hash was compiled in have none
    if current is None or built == current:
        return None
    return (
        f"the native step's binary is stale: built from sources {built[:12] or '(unknown)'} (arithmetic version "
        f"{module.ARITHMETIC_VERSION}), but the sources here are {current[:12]} (arithmetic version "
        f"{sources.source_arithmetic_version()}); rebuild it (make setup)"
    )


try:
    from model.native import _step
except ImportError as e:  # not built (no or a broken compiler at install time) or not loadable on this machine
    _step = None
    STALE: str | None = None
    UNAVAILABLE: str | None = f"the native step is not built or cannot be loaded ({e})"
else:
    STALE = stale_reason(_step)
    UNAVAILABLE = STALE


def why_not(model: Transformer, form: str) -> str | None:
    """Why the native step cannot serve `model` in `form`, or None when it can: every input step.cpp's constructor
    refuses is refused here first, with a reason, so that the torch step serves such a model instead."""
    if UNAVAILABLE:
        return UNAVAILABLE
    cfg = model.config
    if model.lm_head.weight.device.type != "cpu":
        return "the native step runs on the CPU"
    dtype = model.lm_head.weight.dtype
    if dtype != torch.float32 or model.rope_cos.dtype != torch.float32:  # its weights, rope tables and KV cache
        return f"the native step needs a float32 model (this one is {str(dtype).removeprefix('torch.')})"
    if form not in FORMS:
        return f"the native step has no {form} form (it has {', '.join(FORMS)})"
    if cfg.head_dim > MAX_HEAD_DIM or cfg.head_dim % 2:
        return f"the native step needs an even head_dim of at most {MAX_HEAD_DIM} (this model's is {cfg.head_dim})"
    if form == "int8" and int8_group(cfg) is None:
        return "int8 needs d_model and mlp_hidden divisible by 32"
    return None


def check_kernels(kernels: str) -> None:
    """A ValueError unless `kernels` (auto or one of KERNELS) can run here: asked for a path, the native step
    must be built and the CPU must run it."""
    if kernels == "auto":
        return
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; one of auto, {', '.join(KERNELS)}")
    if UNAVAILABLE:
        raise ValueError(f"the {kernels} kernels were asked for, but {UNAVAILABLE}")
    if kernels not in kernels_here():
        raise ValueError(f"this CPU cannot run the {kernels} kernels (it runs {', '.join(kernels_here())})")


def arithmetic_version() -> int:
    return _step.ARITHMETIC_VERSION


def kernels_here() -> list[str]:
    """The kernel paths this CPU runs."""
    return [k for k in KERNELS if _step.cpu_has(k)]


class NativeStep:
    """`model` in weight form `form`, for the native step. kernels: auto (the fastest this CPU runs), or one of
    KERNELS; they all compute the same bits."""

    def __init__(self, model: Transformer, form: str, kernels: str = "auto"):
        if (why := why_not(model, form)) is not None:
            raise RuntimeError(why)
        cfg = model.config
        self.config, self.form = cfg, form
        group, weights, scales, norms = packed(model, form)
        self.weight_bytes = sum(t.numel() * t.element_size() for t in weights + scales + norms)  # read per token
        self._step = _step.Step(
            cfg.n_layer,
            cfg.n_head,
            cfg.d_model,
            cfg.mlp_hidden,
            cfg.norm_eps,
            form,
            group,
            kernels,
            model.embed_tokens.weight.detach().float().contiguous(),
            *_step.rope_tables(cfg.context_length, cfg.head_dim, cfg.rope_theta),  # torch's differ per CPU
            norms,
            weights,
            scales,
        )
        self.kernels = self._step.kernels  # the kernel path that runs: vnni, avx2 or scalar
        self.name = f"native ({self.kernels} kernels)"
        self.arithmetic = f"native-v{arithmetic_version()}"  # every kernel path computes the same bits (tested)

    batch_invariant = True

    def prefill(self, tokens: list[int], row: int, start: int, cache, last: bool, attention: bool):
        """model.step.DecodeStep.prefill: a chunk of one sequence, its entries in one call."""
        n, end = len(tokens), start + len(tokens)
        return self.forward(
            torch.tensor(tokens),
            torch.full((n,), row),
            torch.arange(start, end),
            cache,
            logits_for=torch.tensor([n - 1] if last else [], dtype=torch.long),
            attention_for=torch.tensor([n - 1]) if attention else None,
            n_keys=end,
        )

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache, attention_for: list[int]):
        """model.step.DecodeStep.decode: sequence i in cache row i, one entry each, in one call."""
        n = len(tokens)
        return self.forward(
            tokens,
            torch.arange(n),
            positions,
            cache,
            logits_for=torch.arange(n),
            attention_for=torch.tensor(attention_for) if attention_for else None,
            n_keys=int(positions.max()) + 1,
        )

    def decode_and_choose(self, tokens: list[int], positions: list[int], cache, attention_for: list[int], batch):
        """model.step.DecodeStep.decode_and_choose: the step and the choice (sampling.h) in one call."""
        attention = _NONE_4D
        if attention_for:
            keys = max(positions) + 1
            attention = torch.empty(len(attention_for), self.config.n_layer, self.config.n_head, keys)
        chosen = self._step.decode(
            tokens,
            positions,
            cache.k,
            cache.v,
            torch.tensor(attention_for) if attention_for else _NONE,
            attention,
            *batch.native_args(),
        )
        return batch.choices(chosen), (None if attention is _NONE_4D else attention)

    def forward(
        self,
        tokens: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        cache,
        logits_for: torch.Tensor,
        attention_for: torch.Tensor | None = None,
        n_keys: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run entries (tokens, rows, positions: (E,) int64) through the model, their keys and values into `cache`
        (a KVCache, float32). Returns the logits (len(logits_for), vocab) of the entries logits_for names and, if
        attention_for names entries, their attention probabilities (len(attention_for), n_layer, n_head, n_keys)."""
        logits = torch.empty(len(logits_for), self.config.vocab_size)
        if attention_for is None or len(attention_for) == 0:
            attention_for, attention = _NONE, _NONE_4D
        else:
            attention = torch.empty(len(attention_for), self.config.n_layer, self.config.n_head, n_keys)
        self._step.forward(tokens, rows, positions, cache.k, cache.v, logits_for, logits, attention_for, attention)
        return logits, (None if attention is _NONE_4D else attention)

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) of whole sequences ids (B, T) from position 0, each in a row of a scratch cache:
        the model's forward pass, in this step's form and arithmetic."""
        B, T = ids.shape
        cache = KVCache(self.config, B, torch.float32, "cpu", max_len=T)
        entries = torch.arange(B * T)
        logits, _ = self.forward(
            ids.reshape(-1).long(), entries // T, entries % T, cache, logits_for=entries
        )  # row b's tokens at positions 0..T-1
        return logits.view(B, T, -1)


_NONE = torch.empty(0, dtype=torch.long)
_NONE_4D = torch.empty(0, 0, 0, 0)


def packed(model: Transformer, form: str) -> tuple[int, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """What step.cpp's constructor takes of `model` in `form`: the int8 group (0 for float32), every matrix (int8
    values, or float32), their scales (int8 only), and the norms' weights."""
    group = int8_group(model.config) if form == "int8" else 0
    weights, scales = [], []
    for matrix in step_matrices(model):
        if form == "int8":
            q, scale = quantize_groups(matrix, group)
            weights.append(q.flatten(-2).to(torch.int8).contiguous())
            scales.append(scale.squeeze(-1).contiguous())
        else:
            weights.append(matrix.float().contiguous())
    norms = [n.weight for layer in model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    norms.append(model.norm.weight)
    return group, weights, scales, [n.detach().float().contiguous() for n in norms]


def step_matrices(model: Transformer) -> list[torch.Tensor]:
    """The weight matrices of a step, in the order step.cpp reads them: per layer Q/K/V (stacked), O,
    gate/up (stacked), down; then the unembedding."""
    out = []
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        out += [
            torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach(),
            attn.o_proj.weight.detach(),
            torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
            mlp.down_proj.weight.detach(),
        ]
    return out + [model.lm_head.weight.detach()]
