"""The public Python API: load a checkpoint, generate text, read attention maps.

    from model import TinyLLM
    llm = TinyLLM.load("checkpoints/shakespeare")          # device="auto": CUDA if present, else CPU
    print(llm.generate("ROMEO:", max_new_tokens=100, temperature=0.8, seed=1).text)
    maps = llm.attention("To be, or not to be")            # (n_layer, n_head, T, T) probabilities
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model import checkpoint
from model.generate import Step, TextAssembler, generate
from model.sampling import SamplingParams
from model.tokenizer import ByteTokenizer


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: str  # "length" | "stop" | "context_full"
    steps: list[Step] = field(repr=False, default_factory=list)


class TinyLLM:
    def __init__(self, model, device: torch.device, training: dict | None = None):
        self.model = model
        self.device = device
        self.config = model.config
        self.training = training or {}
        self.tokenizer = ByteTokenizer()

    @classmethod
    def load(cls, path, device: str = "auto", dtype: str | torch.dtype | None = "auto") -> "TinyLLM":
        dev = resolve_device(device)
        model = checkpoint.load_model(path, device=dev, dtype=resolve_dtype(dtype, dev))
        model.fuse_projections()
        return cls(model, dev, checkpoint.load_training(path))

    def generate(self, prompt: str | bytes, max_new_tokens: int = 200, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 stop: list[str] = ()) -> Generation:
        """Generate up to max_new_tokens bytes after the prompt; temperature 0 is greedy."""
        ids = list(prompt) if isinstance(prompt, bytes) else self.tokenizer.encode(prompt)
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        out, steps, reason = [], [], "length"
        assembler = TextAssembler([s.encode("utf-8") for s in stop if s])  # the server's stop-string rules
        for step in generate(self.model, ids, max_new_tokens, params, gen):
            out.append(step.token)
            steps.append(step)
            if assembler.push(step.token)[1]:
                kept = len(assembler.data)  # the stop string's tokens and steps are dropped
                del out[kept:], steps[kept:]
                reason = "stop"
                break
        else:
            if len(out) < max_new_tokens:
                reason = "context_full"
        assembler.finish()
        return Generation("".join(assembler.text), out, reason, steps)

    @torch.inference_mode()
    def attention(self, text: str | bytes) -> torch.Tensor:
        """Attention probabilities of every layer and head over `text`: (n_layer, n_head, T, T), float32."""
        ids = list(text) if isinstance(text, bytes) else self.tokenizer.encode(text)
        assert 0 < len(ids) <= self.config.context_length, \
            f"text has {len(ids)} bytes; 1..{self.config.context_length} fit"
        _, attn = self.model(torch.tensor([ids], device=self.device), need_weights=True)
        return torch.stack([a[0] for a in attn]).float().cpu()
