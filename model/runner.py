"""The runner: the forward passes of a loaded model that serve requests, over one fixed-shape KV cache.

The server's engine (on its one worker thread) and `TinyLLM` (the Python API) generate through a runner; neither
touches the model's tensors or the cache.

- `prefill(seq, row, start, end)`: a chunk of a sequence's prompt into one cache row; at the prompt's
  end, the first generated token.
- `decode(seqs)`: one token for each sequence, sequence i in cache row i, in one batched step.
- `score(ids, top_n)`: each byte's log-probability given the ones before it (prompt scoring).
- `attention(ids)`: attention maps of every layer and head (the explicit softmax path).
- `move(src, dst, length)`: copy a row of the cache (the engine keeps its sequences in rows 0..n-1).
- `prefill_exact`, `decode_exact`: one sequence at a time in the exact model with heads switched off and each token
  explained (model.trace.cached_step, model.attribution.split_step), in rows of its own (`exact_row(i)`), never
  in a batch: for sequences that switch heads off or ask why each byte was chosen.

Generation (prefill and decode) runs in a decode step (model.step): the native step where it can, else the torch
step; `describe()` says which and why. The analyses of a text (model.trace and the tools that read it) run the
exact model themselves, through its hook points.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

import torch
import torch.nn.functional as F

from model import numerics, trace
from model import step as steps
from model.attribution import split_step
from model.choice import Batch, Choices
from model.kv_cache import KVCache
from model.model import Transformer
from model.sampling import SamplingParams, random_seed
from model.sequence import Sequence, TokenOutput

Scored = tuple[int, float | None, list[tuple[int, float]] | None]  # (byte, logprob, top alternatives)


class Runner:
    """model: the exact float32 (or, on a GPU, bfloat16) model, for prompt scoring and attention maps. Generation
    runs in weight form `form` (model.weight_forms), in the step model.step.choose picks: the native step where it
    can (native_step=True, a CPU, a form it has), else the torch step; `why_not_native` says why not. kernels: the
    native step's (auto, or one of model.native.step.KERNELS).
    exact_rows: cache rows for sequences that run in the exact model (after the prefill row).
    """

    def __init__(
        self,
        model: Transformer,
        max_batch: int = 1,
        form: str = "float32",
        native_step: bool = True,
        kernels="auto",
        exact_rows: int = 0,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.config, self.form = model, model.config, form
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self.max_batch = max_batch
        self.prefill_row = max_batch  # one row past the decoded ones, where prompts are prefilled
        self.exact_rows = exact_rows
        self.step, self.why_not_native = steps.choose(model, form, kernels, native_step)
        self.cache = KVCache(self.config, max_batch + 1 + exact_rows, self.dtype, self.device)

    # ------------------------------------------------------------ what serves

    @property
    def batch_invariant(self) -> bool:
        return self.step.batch_invariant

    def describe(self) -> dict:
        """What generates, for people and for /v1/model: the weight form, the step and why it is not the native one,
        whether a request's bytes are independent of its batch."""
        return {
            "weight_form": self.form,
            "step": self.step.name,
            "native": self.why_not_native is None,
            "why_not_native": self.why_not_native,
            "batch_invariant": self.step.batch_invariant,
            "why_not_batch_invariant": None
            if self.step.batch_invariant
            else f"the torch step serves ({self.why_not_native}): its matrix kernels change with the batch's shape",
            "kernels": self.step.kernels,
            "weight_bytes": self.step.weight_bytes,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def fingerprint(self, checkpoint_sha256: str) -> str:
        """OpenAI's system_fingerprint: it changes exactly when what decides the bytes does: the checkpoint
        (model.checkpoint.content_sha256), the weight form, the step's arithmetic (the native step's version;
        for the torch step, its device, dtype and torch's version), or the arithmetic after the logits
        (model.numerics: the native version, or torch's version and CPU dispatch)."""
        key = f"{checkpoint_sha256}|{self.form}|{self.step.arithmetic}|{numerics.fingerprint_part()}"
        return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:12]

    # ------------------------------------------------------------ generation

    @torch.inference_mode()
    def prefill(self, seq: Sequence, row: int, start: int, end: int) -> TokenOutput | None:
        """Run seq.tokens[start:end] into cache row `row` (positions start..end-1; earlier ones are cached).

        When `end` is the end of seq.tokens, choose the next token and return it (None if sampling failed);
        before that, return None.
        """
        last = end == len(seq.tokens)
        want_attention = last and seq.attention is not None
        logits, attn = self.step.prefill(seq.tokens[start:end], row, start, self.cache, last, want_attention)
        if not last:
            return None
        return self._choose([seq], logits, [attn[0] if want_attention else None])[0]

    def decode(self, seqs: list[Sequence]) -> list[TokenOutput | None]:
        """One token for every sequence, sequence i sitting in cache row i; None where sampling failed. (No
        inference_mode here: entering it costs a tenth of the Python around a batch-1 step; a step that runs torch
        enters it itself.)"""
        n = len(seqs)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a decode step takes 1..{self.max_batch} sequences, got {n}")
        tokens = [s.tokens[-1] for s in seqs]
        positions = [len(s.tokens) - 1 for s in seqs]
        asking = [i for i, s in enumerate(seqs) if s.attention is not None]
        batch = Batch(seqs, self.config.vocab_size)
        chosen, attn = self.step.decode_and_choose(tokens, positions, self.cache, asking, batch)
        rows: list[torch.Tensor | None] = [None] * n
        for m, i in enumerate(asking):
            rows[i] = attn[m]
        return self._outputs(seqs, chosen, rows)

    def exact_row(self, i: int) -> int:
        """The cache row of exact sequence i (0..exact_rows-1)."""
        if not 0 <= i < self.exact_rows:
            raise ValueError(f"exact row {i} out of range: this runner has {self.exact_rows} (Runner(exact_rows=...))")
        return self.max_batch + 1 + i

    @torch.inference_mode()
    def prefill_exact(self, seq: Sequence, row: int, start: int, end: int) -> TokenOutput | None:
        """prefill() in the exact model, seq.heads_off switched off, into an exact row; with seq.explain, the chosen
        token carries the pushes on its logit (TokenOutput.explain)."""
        last = end == len(seq.tokens)
        need_weights = last and seq.attention is not None
        step = trace.cached_step(self.model, seq.tokens[start:end], start, self.cache, row, seq.heads_off, need_weights)
        if not last:
            return None
        out = self._choose([seq], step.logits[None], [step.attention])[0]
        if out is not None and seq.explain:
            out.explain = split_step(self.model, step, end - 1, out.token)
        return out

    def decode_exact(self, seq: Sequence, row: int) -> TokenOutput | None:
        """One token for one sequence in the exact model (its last token through prefill_exact)."""
        n = len(seq.tokens)
        return self.prefill_exact(seq, row, n - 1, n)

    def _choose(self, seqs: list[Sequence], logits: torch.Tensor, attention) -> list[TokenOutput | None]:
        """Choose each sequence's next token from its logits row (B, vocab), all rows at once (model.choice)."""
        return self._outputs(seqs, Batch(seqs, logits.shape[-1]).choose(logits), attention)

    @staticmethod
    def _outputs(seqs: list[Sequence], chosen: Choices, attention) -> list[TokenOutput | None]:
        """Each sequence's TokenOutput (None where choosing failed). attention: per sequence, None or its query's
        attention (n_layer, n_head, keys) in every layer."""
        out: list[TokenOutput | None] = []
        for i, (seq, row) in enumerate(zip(seqs, chosen.rows.unbind(0))):
            token = chosen.tokens[i]
            if token < 0:
                out.append(None)
                continue
            rows = None
            if seq.attention is not None:
                layers, heads = seq.attention
                rows = [attention[i][layer, heads, : len(seq.tokens)].float().cpu() for layer in layers]
            out.append(TokenOutput(token, chosen.logprobs[i], row, chosen.top[i], rows))
        return out

    @contextlib.contextmanager
    def every_core(self):
        """For a whole-text pass (scoring, attention maps, inspection) on the engine's thread: the decode steps wait
        for it anyway, so it may use every core, not only the step's threads."""
        threads = torch.get_num_threads()
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy cache row src's first `length` positions into row dst."""
        self.cache.move(src, dst, length)

    # ------------------------------------------------------------ whole texts, no cache

    @torch.inference_mode()
    def score(
        self, ids: list[int], top_n: int = 0, heads_off: list[trace.Head] = (), ablation: trace.Ablation = "zero"
    ) -> list[Scored]:
        """Each byte of ids with its log-probability given the bytes before it (the first has none) and,
        with top_n, the top_n most likely bytes at its position; with heads_off, of the model without them."""
        if heads_off:
            logits = trace.run(self.model, ids, heads_off, ablation).logits[None]  # (1, T, vocab)
        else:
            logits, _ = self.model(torch.tensor([ids], device=self.device))  # (1, T, vocab)
        logprobs = F.log_softmax(logits[0, :-1].float(), dim=-1).cpu()  # (T-1, vocab): row t predicts byte t+1
        chosen = logprobs.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).tolist()
        top_values, top_ids = torch.topk(logprobs, top_n, dim=-1) if top_n else (None, None)
        scored: list[Scored] = [(ids[0], None, None)]
        for t in range(1, len(ids)):
            top = list(zip(top_ids[t - 1].tolist(), top_values[t - 1].tolist())) if top_n else []
            scored.append((ids[t], chosen[t - 1], top))
        return scored

    @torch.inference_mode()
    def attention(self, ids: list[int]) -> torch.Tensor:
        """Attention probabilities of every layer and head over ids: (n_layer, n_head, T, T), float32 on the CPU."""
        trace.check_text(self.config, ids)
        _, attn = self.model(torch.tensor([ids], device=self.device), need_weights=True)
        return torch.stack([a[0] for a in attn]).float().cpu()

    @torch.inference_mode()
    def warmup(self) -> None:
        """Every kind of pass once, before any sequence is in the cache: what it writes into the rows is
        overwritten before it is ever read."""
        self.attention(list(range(8)))
        seq = Sequence(list(range(8)), 8, SamplingParams(temperature=0), seed=random_seed())
        self.prefill(seq, self.prefill_row, 0, 8)
        self.decode([seq] * min(2, self.max_batch))
        if self.exact_rows:
            self.prefill_exact(Sequence(seq.tokens, 8, seq.params, seq.seed, explain=True), self.exact_row(0), 0, 8)
