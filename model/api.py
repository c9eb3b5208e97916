"""The public Python API: load a checkpoint, generate text, read attention maps.

from model import TinyLLM
llm = TinyLLM.load("checkpoints/shakespeare")          # device="auto": CUDA if present, else CPU
print(llm.generate("ROMEO:", max_new_tokens=100, temperature=0.8, seed=1).text)
out = llm.generate("ROMEO:", heads_off=[(0, 4)], explain=True)   # without head 0.4; out.steps[i].explain.top(5)
maps = llm.attention("To be, or not to be")            # (n_layer, n_head, T, T) probabilities
step = llm.explain("The cat sat on the mat", layer=2, head=1, query=21)   # one head, step by step
lens = llm.logit_lens("The cat sat on the mat")        # the next byte after every layer
push = llm.attribute("The cat sat on the mat", position=20)               # each head's push on a logit
loss = llm.ablate("The cat sat on the mat", heads_off=[(0, 1)])           # the loss without some heads
atlas = llm.atlas(); atlas.pair(0, 3, ord("H"), ord("i"))                # the attention atlas (tinyllm-atlas)
p = llm.patch("ROMEO: ... ROME", "JULIE: ... ROME")                       # activation patching, clean -> corrupt
scores = llm.detect(["some text"])                                        # head detectors: induction, previous...
same = llm.contexts("the eat", byte=ord("e"))                             # one byte's residual across contexts
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model import atlas as atlas_compute
from model import checkpoint, form_quality, weight_forms
from model.ablation import AblationLoss, ablation_loss
from model.atlas_store import Atlas
from model.attribution import Attribution, attribute
from model.contexts import Contexts, compare, occurrences
from model.detectors import detect
from model.explain import Walkthrough, blocks_needed, explain
from model.generate import FinishReason, TextAssembler, generate
from model.lens import Lens, logit_lens
from model.native import step as native
from model.patching import Patching, patch
from model.runner import Runner
from model.sampling import SamplingParams
from model.sequence import TokenOutput
from model.tokenizer import tokenizer
from model.trace import Ablation, Head, RecentRuns, Trace


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
    finish_reason: FinishReason
    steps: list[TokenOutput] = field(repr=False, default_factory=list)


def resolve_form(form: str, path, device: torch.device) -> tuple[str, str]:
    """The weight form generation runs in, and why: on a CPU `form`, or for "auto" the checkpoint's default
    (model.form_quality.default_form); on a GPU the model as loaded."""
    if device.type != "cpu":
        return "float32", "the model's own dtype on the GPU"
    if form == "auto":
        return form_quality.default_form(path)
    if form not in weight_forms.FORMS:
        raise ValueError(f"unknown weight form {form!r}; one of auto, {', '.join(weight_forms.FORMS)}")
    return form, "as asked"


class TinyLLM:
    def __init__(
        self,
        model,
        device: torch.device,
        training_info: dict | None = None,
        form: str = "float32",
        form_reason: str = "",
        kernels: str = "auto",
    ):
        native.check_kernels(kernels)
        self.model = model
        self.device = device
        self.config = model.config
        self.training_info = training_info or {}  # the checkpoint's training.json
        self.form, self.form_reason = form, form_reason  # the weight form generation runs in, and why
        self.kernels = kernels  # the native step's kernel path: auto, or one pinned (native.KERNELS)
        self.tokenizer = tokenizer
        self._runner: Runner | None = None
        self._recent_runs: RecentRuns | None = None
        # One call at a time: the runner's cache row and the recent runs are this object's single copies, so two
        # threads' generations would write over each other's keys and values. Reentrant: explain calls trace.
        self._lock = threading.RLock()
        self.path: Path | None = None  # the checkpoint folder, when loaded from one (its atlas lives there)

    @classmethod
    def load(
        cls,
        path,
        device: str = "auto",
        dtype: str | torch.dtype | None = "auto",
        form: str = "auto",
        kernels: str = "auto",
    ) -> TinyLLM:
        """dtype: the model's (auto: float32 on a CPU, bfloat16 on CUDA); form: the weight form generation runs in
        on a CPU (auto: the checkpoint's default, int8 where its weight_forms.json allows it); kernels: the native
        step's kernel path (auto: the fastest this CPU runs; vnni, avx2 or scalar pins one, a ValueError where
        the CPU lacks it or the native step is not built)."""
        native.check_kernels(kernels)  # before the checkpoint is read
        dev = resolve_device(device)
        model = checkpoint.load_model(path, device=dev, dtype=resolve_dtype(dtype, dev))
        form, form_reason = resolve_form(form, path, dev)
        llm = cls(model, dev, checkpoint.load_training(path), form, form_reason, kernels)
        llm.path = Path(path)
        return llm

    @property
    def runner(self) -> Runner:
        """A one-sequence runner for this object's own calls (the server's engine makes its own)."""
        with self._lock:
            if self._runner is None:
                self._runner = Runner(self.model, max_batch=1, form=self.form, kernels=self.kernels, exact_rows=1)
            return self._runner

    def generate(
        self,
        prompt: str | bytes,
        max_new_tokens: int = 200,
        *,
        seed: int | None = None,
        stop: list[str] = (),
        utf8: str = "valid",
        heads_off: list[Head] = (),
        explain: bool = False,
        **sampling,
    ) -> Generation:
        """Generate up to max_new_tokens bytes after the prompt. **sampling: the fields of SamplingParams
        (model/sampling.py: temperature, 0 for greedy; top_k, top_p and the penalties), as the server takes them;
        an unknown one is a TypeError. utf8: "valid" (only bytes that keep the text valid UTF-8, never a character cut
        by max_new_tokens: SamplingParams.valid_utf8) or "any" (the raw model).

        heads_off: (layer, head) pairs whose outputs are zeroed; explain: each step's `.explain` is the
        attribution of its byte's logit (model.attribution.Attribution: `.top(n)`, `.heads`, `.logit`). Either runs
        the exact model one token at a time (model.trace.cached_step) instead of the generation step."""
        ids = list(prompt) if isinstance(prompt, bytes) else self.tokenizer.encode(prompt)
        if utf8 not in ("valid", "any"):
            raise ValueError(f'utf8 must be "valid" or "any", got {utf8!r}')
        params = SamplingParams(**sampling, valid_utf8=utf8 == "valid")
        with self._lock:
            return self._generate(ids, max_new_tokens, params, seed, stop, heads_off, explain)

    def _generate(self, ids, max_new_tokens, params, seed, stop, heads_off, explain) -> Generation:
        out, steps = [], []
        assembler = TextAssembler([s.encode("utf-8") for s in stop if s])  # the server's stop-string rules
        tokens = generate(self.runner, ids, max_new_tokens, params, seed, heads_off=heads_off, explain=explain)
        while True:
            try:
                step = next(tokens)
            except StopIteration as end:
                reason = end.value
                break
            out.append(step.token)
            steps.append(step)
            if assembler.push(step.token)[1]:
                kept = len(assembler.data)  # the stop string's tokens and steps are dropped
                del out[kept:], steps[kept:]
                reason = FinishReason.STOP
                break
        assembler.finish()
        return Generation("".join(assembler.text), out, reason, steps)

    def attention(self, text: str | bytes) -> torch.Tensor:
        """Attention probabilities of every layer and head over `text`: (n_layer, n_head, T, T), float32."""
        ids = list(text) if isinstance(text, bytes) else self.tokenizer.encode(text)
        with self._lock:
            return self.runner.attention(ids)

    # ------------------------------------------------------------ looking inside (model/trace.py and its readers)

    def trace(
        self, text: str | bytes, heads_off: list[Head] = (), ablation: Ablation = "zero", blocks: int | None = None
    ) -> Trace:
        """A run of the exact model over `text` with heads_off switched off (model.trace), through its first
        `blocks` blocks (all by default). The last two are kept, so the methods below read the same text again
        without a forward pass (or only run the blocks a kept run has not)."""
        ids = list(text) if isinstance(text, bytes) else self.tokenizer.encode(text)
        with self._lock:
            if self._recent_runs is None:
                self._recent_runs = RecentRuns(self.model)
            return self._recent_runs(ids, heads_off, ablation, blocks)

    def explain(
        self,
        text: str | bytes,
        layer: int,
        head: int,
        query: int,
        heads_off: list[Head] = (),
        ablation: Ablation = "zero",
    ) -> Walkthrough:
        """One head's softmax(q·kᵀ/√d_k)·V for the byte at index `query`, step by step (model.explain)."""
        with self._lock:
            trace = self.trace(text, heads_off, ablation, blocks_needed(self.model.config, layer, heads_off, ablation))
            return explain(self.model, trace, layer, head, query)

    def logit_lens(
        self, text: str | bytes, top_k: int = 5, heads_off: list[Head] = (), ablation: Ablation = "zero"
    ) -> Lens:
        """The next-byte distribution read from the residual stream after every layer (model.lens)."""
        with self._lock:
            return logit_lens(self.model, self.trace(text, heads_off, ablation), top_k)

    def attribute(
        self,
        text: str | bytes,
        position: int,
        target: int | None = None,
        heads_off: list[Head] = (),
        ablation: Ablation = "zero",
    ) -> Attribution:
        """Each head's, MLP's and the embedding's push on the logit of `target` (default: the byte that comes next)
        at `position` (model.attribution)."""
        with self._lock:
            return attribute(self.model, self.trace(text, heads_off, ablation), [position], [target])[0]

    def ablate(self, text: str | bytes, heads_off: list[Head], ablation: Ablation = "zero") -> AblationLoss:
        """Each byte's loss with every head and with heads_off switched off (model.ablation)."""
        with self._lock:
            return ablation_loss(self.trace(text), self.trace(text, heads_off, ablation))

    # ------------------------------------------------------------ other runtimes

    def export_gguf(self, out, type: str = "f32", name: str = "tinyllm", model_card: str | None = None):
        """Write this model as one GGUF file for llama.cpp (model.export_gguf): type "f32" (exact), "f16" or
        "q8_0"; name and model_card (where its card is) go into the file's metadata. Returns the file's Path."""
        from model.export_gguf import write_gguf  # the gguf package is only needed to export

        return write_gguf(self.model.state_dict(), self.config, out, type, name, model_card)

    # ------------------------------------------------------------ across text (model/atlas.py, detectors, patching)

    def atlas(self, data: str | bytes | None = None, progress: bool = False) -> Atlas:
        """The attention atlas (model.atlas_store.Atlas): the one saved next to the checkpoint (`tinyllm-atlas`
        makes it; AtlasMissing says so when there is none), or, given `data`, computed over it now (not saved)."""
        cfg = self.config
        if data is None:
            if self.path is None:
                raise ValueError("this model was not loaded from a checkpoint folder: give the corpus as data")
            return Atlas.load(self.path, cfg.n_layer, cfg.n_head, checkpoint.content_sha256(self.path))
        raw = data.encode() if isinstance(data, str) else bytes(data)
        corpus = atlas_compute.Corpus(np.frombuffer(raw, dtype=np.uint8).copy(), [{"bytes": len(raw), "part": "given"}])
        return Atlas.from_computed(
            atlas_compute.compute(self.model, corpus, progress=progress), cfg.n_layer, cfg.n_head
        )

    def patch(
        self, clean: str | bytes, corrupt: str | bytes, target: int | None = None, foil: int | None = None
    ) -> Patching:
        """Activation patching from `clean` into `corrupt` (equal byte lengths): per layer × position of the residual
        stream and per head, the fraction of logit[target] − logit[foil] at the last position restored
        (model.patching; target: the clean run's top byte by default, foil: the corrupt run's next best)."""
        return patch(self.model, self._ids(clean), self._ids(corrupt), target, foil)

    def _ids(self, text: str | bytes) -> list[int]:
        return list(text) if isinstance(text, bytes) else self.tokenizer.encode(text)

    def contexts(
        self,
        text: str | bytes,
        positions: list[int] | None = None,
        byte: int | None = None,
        other_text: str | bytes | None = None,
        other_positions: list[int] | None = None,
    ) -> Contexts:
        """One byte in different contexts (model.contexts): the cosine of its residual streams between occurrences
        after the embedding and after every layer. Occurrences: `positions` in text (and other_positions in
        other_text), or every occurrence of `byte` (default: the byte at the first position given)."""
        texts = [self._ids(text)] + ([self._ids(other_text)] if other_text is not None else [])
        wanted = [positions] + ([other_positions] if other_text is not None else [])
        byte, found = occurrences(texts, wanted, byte)
        return compare(self.model, texts, found, byte)

    def detect(self, texts: list[str | bytes] = ()) -> dict:
        """Every head detector's score per head (model.detectors): on `texts` (TransformerLens's previous, duplicate
        and induction scores, heads.py's same character, same word and start of text), on the repeated random probe,
        and the OV copying score; numpy arrays (n_layer, n_head)."""
        return detect(self.model, [self._ids(t) for t in texts])
