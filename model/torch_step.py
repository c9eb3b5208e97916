"""The torch step: generation in torch's own kernels, for any weight form on any device (model.step).

Prompts are prefilled in the exact model; decode steps run in a copy of it whose linear maps are in the chosen weight
form, with Q/K/V and gate/up fused into one product each (`decoder`). Steps that report attention run in the exact
model's explicit softmax. Its matrix kernels change with the batch's shape, so a sequence's bytes can change with
the rest of its batch (not batch-invariant).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from model.kv_cache import CacheSlots, KVCache
from model.model import Transformer
from model.quantize import int8_group
from model.weight_forms import linear_in


class TorchStep:
    batch_invariant = False
    kernels = None

    def __init__(self, model: Transformer, form: str):
        self.model, self.form = model, form
        self.decoder = decoder(model, form)
        device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
        self.device = device
        self.name = f"torch ({device.type}, {str(dtype).removeprefix('torch.')} model)"
        self.arithmetic = f"torch-{torch.__version__}-{device.type}-{dtype}"
        read = [self.decoder.layers, self.decoder.norm, self.decoder.lm_head]  # not the embedding table: one row
        tensors = {id(t): t for m in read for t in (*m.parameters(), *m.buffers())}
        self.weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())

    def prefill(self, tokens: list[int], row: int, start: int, cache: KVCache, last: bool, attention: bool):
        end = start + len(tokens)
        ids = torch.tensor([tokens], device=self.device)  # (1, T)
        slots = CacheSlots(row, torch.arange(start, end, device=self.device).unsqueeze(0))  # (1, T)
        logits, attn = self.model(ids, need_weights=attention, cache=cache, slots=slots)
        if attention:
            attn = torch.stack([a[0, :, -1] for a in attn]).unsqueeze(0)  # (1, n_layer, nh, keys)
        return logits[:, -1], attn

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, attention_for: list[int]):
        ids = tokens.to(self.device).unsqueeze(1)  # (n, 1)
        slots = CacheSlots(0, positions.to(self.device).unsqueeze(1))  # sequence i in row i
        if not attention_for:
            return self.decoder(ids, cache=cache, slots=slots)[0][:, -1], None
        logits, attn = self.model(ids, need_weights=True, cache=cache, slots=slots)  # the explicit softmax
        rows = torch.stack([torch.stack([a[i, :, -1] for a in attn]) for i in attention_for])
        return logits[:, -1], rows  # (n, vocab), (len(attention_for), n_layer, nh, keys)

    @torch.inference_mode()
    def decode_and_choose(self, tokens: list[int], positions: list[int], cache: KVCache, attention_for, batch):
        logits, attn = self.decode(torch.tensor(tokens), torch.tensor(positions), cache, attention_for)
        return batch.choose(logits), attn

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(ids)[0]


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
        attn.qkv = linear_in(
            form,
            torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight]),
            group,
        )
        attn.o_proj = linear_in(form, layer.self_attn.o_proj.weight, group)
        mlp.gate_up = linear_in(form, torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]), group)
        mlp.down_proj = linear_in(form, layer.mlp.down_proj.weight, group)
        block.self_attn, block.mlp = attn, mlp
        out.layers.append(block)
    out.lm_head = linear_in(form, model.lm_head.weight, group)
    return out.eval()
