"""The runner: every forward pass of a loaded model, over one fixed-shape KV cache.

The server's engine (on its one worker thread) and `TinyLLM` (the Python API) both run the model only
through a runner; neither touches the model's tensors or the cache.

- `prefill(seq, row, start, end)`: a chunk of a sequence's prompt into one cache row; at the prompt's
  end, the first generated token.
- `decode(seqs)`: one token for each sequence, sequence i in cache row i, in one batched step.
- `score(ids, top_n)`: each byte's log-probability given the ones before it (prompt scoring).
- `attention(ids)`: attention maps of every layer and head (the explicit softmax path).
- `move(src, dst, length)`: copy a row of the cache (the engine keeps its sequences in rows 0..n-1).

The decode step has static shapes: token ids and positions live in preallocated buffers, the batch can be
padded to the next of a few bucket sizes, and the cache never changes shape, so a compiled or
graph-captured step can replace the eager one (`decode_step`) here and nowhere else.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import weight_forms
from model.kv_cache import KVCache
from model.model import CacheSlots, Transformer
from model.sampling import SamplingParams, sample_rows

log = logging.getLogger("tinyllm.runner")

DECODE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Scored = tuple[int, float | None, list[tuple[int, float]] | None]  # (byte, logprob, top alternatives)


@dataclass
class Sequence:
    """One sequence as the runner sees it: its tokens so far and how to choose the next one."""

    tokens: list[int]  # the prompt, then the generated tokens
    n_prompt: int
    params: SamplingParams = SamplingParams()
    generator: torch.Generator | None = None  # None: torch's global generator
    top_logprobs: int = 0  # alternatives to report with each token
    attention: tuple[list[int], list[int]] | None = None  # (layers, heads) whose attention rows to report


@dataclass
class TokenOutput:
    """A chosen token, with what the model said about it."""

    token: int
    logprobs: torch.Tensor  # (vocab,) float32 on the CPU: log-softmax of the raw logits
    top_logprobs: list[tuple[int, float]]  # the most likely tokens, most likely first
    attention: list[torch.Tensor] | None  # per chosen layer (chosen heads, keys): the row that chose it

    @property
    def logprob(self) -> float:
        return float(self.logprobs[self.token])


def decode_step(decoder: Transformer):
    """The decode step of `decoder`: (B, 1) tokens at (B, 1) positions in rows 0..B-1 of the per-layer caches k
    and v -> logits (B, 1, vocab). A function of its arguments alone, so that a compiled version of it can be
    warmed up on a scratch cache while the real one serves."""

    def step(tokens: torch.Tensor, positions: torch.Tensor, k: list, v: list) -> torch.Tensor:
        return decoder(tokens, cache=KVCache.of(k, v), slots=CacheSlots(0, positions))[0]

    return step


class Runner:
    """model: the exact float32 (or, on a GPU, bfloat16) model, for prefill, scoring and attention; the decode
    step runs a copy in weight form `form` (model.weight_forms) for one sequence and in `batch_form` (default:
    the same) for several, except in steps that report attention.

    compile: the decode step is compiled with torch.compile (Inductor), once for batch 1 and once for any
    other batch size, in the background (start_compiling); it serves as soon as it is ready, the eager step
    until then. buckets: batch sizes a step is padded to, for steps captured per shape (CUDA graphs); None,
    the default, pads nothing (the compiled CPU step takes any batch size: padding would only add work).
    """

    def __init__(
        self,
        model: Transformer,
        max_batch: int = 1,
        form: str = "float32",
        batch_form: str | None = None,
        compile: bool = False,
        buckets: tuple[int, ...] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.config = model, model.config
        self.forms = (form, batch_form or form)  # for a step of one sequence, and of several
        decoders = {f: weight_forms.decoder(model, f) for f in self.forms}
        self.decoders = tuple(decoders[f] for f in self.forms)
        self.compile = compile
        self.compiled_in: float | None = None  # seconds the compiled step took to be ready
        self.compile_error: str | None = None  # why it could not be compiled, if it could not
        # What decode() runs for one sequence and for several: the eager steps, then the compiled ones.
        self._steps = [decode_step(d) for d in self.decoders]
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self.max_batch = max_batch
        self.prefill_row = max_batch  # one row past the decoded ones, where prompts are prefilled
        self.cache = KVCache(self.config, max_batch + 1, self.dtype, self.device)
        self.buckets = tuple(sorted({b for b in buckets if b < max_batch} | {max_batch})) if buckets else None
        # The decode step's inputs, sized for the largest bucket: (B, 1) token ids and their positions.
        self.tokens = torch.zeros(max_batch, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(max_batch, 1, dtype=torch.long, device=self.device)

    def bucket(self, n: int) -> int:
        """The batch size a step of n sequences is padded to."""
        return n if self.buckets is None else self.buckets[bisect.bisect_left(self.buckets, n)]

    # ------------------------------------------------------------ generation

    @torch.inference_mode()
    def prefill(self, seq: Sequence, row: int, start: int, end: int) -> TokenOutput | None:
        """Run seq.tokens[start:end] into cache row `row` (positions start..end-1; earlier ones are cached).

        When `end` is the end of seq.tokens, choose the next token and return it (None if sampling failed);
        before that, return None.
        """
        last = end == len(seq.tokens)
        ids = torch.tensor([seq.tokens[start:end]], device=self.device)
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)  # (1, T)
        want_attention = last and seq.attention is not None
        logits, attn = self.model(ids, need_weights=want_attention, cache=self.cache, slots=CacheSlots(row, positions))
        if not last:
            return None
        rows = [a[:, :, -1] for a in attn] if want_attention else None  # per layer (1, nh, keys)
        return self._choose([seq], logits[:, -1], rows)[0]

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> list[TokenOutput | None]:
        """One token for every sequence, sequence i sitting in cache row i; None where sampling failed."""
        n = len(seqs)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a decode step takes 1..{self.max_batch} sequences, got {n}")
        B = self.bucket(n)
        # Padding rows n..B-1 are free cache rows: what the step writes there is never read.
        self.tokens[:B, 0] = torch.tensor([s.tokens[-1] for s in seqs] + [0] * (B - n))
        self.positions[:B, 0] = torch.tensor([len(s.tokens) - 1 for s in seqs] + [0] * (B - n))
        if any(s.attention is not None for s in seqs):  # exact rows: the float32 model's explicit softmax
            slots = CacheSlots(0, self.positions[:B])
            logits, attn = self.model(self.tokens[:B], need_weights=True, cache=self.cache, slots=slots)
            return self._choose(seqs, logits[:n, -1], [a[:n, :, -1] for a in attn])
        logits = self.step(B)(self.tokens[:B], self.positions[:B], self.cache.k, self.cache.v)
        return self._choose(seqs, logits[:n, -1], None)

    def step(self, batch: int):
        """The decode step that serves `batch` sequences."""
        return self._steps[batch > 1]

    def start_compiling(self) -> threading.Thread:
        """Compile the decode step in a background thread (on a small scratch cache: the real one is in use)
        and let decode() use it once it is ready. Compiled code is cached on disk by Inductor, so a second start
        is quicker."""
        # torch._dynamo is imported here, on the caller's thread, before the compile thread starts: otherwise the
        # first call of the cache's custom op (the engine's warm-up) imports it lazily while the compile thread
        # imports Inductor, and two threads importing it at once can deadlock (seen: the engine died of an
        # ImportError). So start compiling before the engine. (Importing it fixes Inductor's cache folder from
        # TORCHINDUCTOR_CACHE_DIR: the server sets that first.)
        import torch._dynamo

        # The compiled step is guarded on torch's thread count, which is per thread: compile with the caller's.
        threads = torch.get_num_threads()
        thread = threading.Thread(target=self._compile, args=(threads,), name="tinyllm-compile", daemon=True)
        thread.start()
        return thread

    def _compile(self, threads: int) -> None:
        torch.set_num_threads(threads)
        try:
            if self.device.type == "cpu":  # Inductor's CPU code is C++: without a compiler, say so in one line
                from torch._inductor.cpp_builder import get_cpp_compiler
                from torch._inductor.exc import InvalidCxxCompiler

                try:
                    get_cpp_compiler()
                except InvalidCxxCompiler as e:
                    self.compile_error = f"no C++ compiler for torch.compile ({e})"
                    log.warning("%s; the eager decode step serves", self.compile_error)
                    return
            self._compile_and_warm_up()
        except Exception as e:
            self.compile_error = f"compiling the decode step failed: {e!r}"
            log.exception("compiling the decode step failed; the eager step serves")

    def _compile_and_warm_up(self) -> None:
        start = time.perf_counter()
        # torch's compiler settings are per thread; these two apply to the compilation, which happens here.
        # Sizes that happen to be equal in the warm-up (a batch of 2, 2 heads) must not be assumed equal later.
        torch.fx.experimental._config.use_duck_shape = False
        # Every runner's steps share one code object, and Dynamo keeps at most recompile_limit graphs per code
        # object: two per runner (batch 1, and every other batch size), so leave room for many models.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        # Tensors made like the real ones (outside inference mode), or the compiled step's guards reject those.
        scratch = KVCache(self.config, 3, self.dtype, self.device)  # 3 rows: a size dynamic shapes do not pin
        tokens = torch.zeros(2, 1, dtype=torch.long, device=self.device)
        positions = torch.full((2, 1), 7, dtype=torch.long, device=self.device)
        compiled = list(self._steps)
        with torch.inference_mode():
            for regime, batch in ((1, 2), (0, 1)) if self.max_batch > 1 else ((0, 1),):
                compiled[regime] = torch.compile(decode_step(self.decoders[regime]), dynamic=True)
                compiled[regime](tokens[:batch], positions[:batch], scratch.k, scratch.v)
        self._steps = compiled
        self.compiled_in = time.perf_counter() - start
        log.info("compiled decode step ready after %.1f s", self.compiled_in)

    def _choose(self, seqs: list[Sequence], logits: torch.Tensor, attn_rows) -> list[TokenOutput | None]:
        """Sample each sequence's next token from its logits row (B, vocab), all rows at once.

        attn_rows, when any sequence asked for attention: per layer, (B, n_head, keys).
        """
        logits = logits.float().cpu()  # the one host-device synchronisation per step
        logprobs = F.log_softmax(logits, dim=-1)
        tokens = self._sample(seqs, logits)
        asked = [i for i, seq in enumerate(seqs) if seq.top_logprobs and tokens[i] is not None]
        top = {}
        if asked:
            values, indices = logprobs[asked].topk(max(seqs[i].top_logprobs for i in asked), dim=-1)
            for r, i in enumerate(asked):
                n = seqs[i].top_logprobs
                top[i] = list(zip(indices[r, :n].tolist(), values[r, :n].tolist()))
        out: list[TokenOutput | None] = []
        for i, (seq, token) in enumerate(zip(seqs, tokens)):
            rows = None
            if token is not None and seq.attention is not None:
                layers, heads = seq.attention
                rows = [attn_rows[layer][i, heads, : len(seq.tokens)].float().cpu() for layer in layers]
            out.append(None if token is None else TokenOutput(token, logprobs[i], top.get(i, []), rows))
        return out

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int | None]:
        """The batch's tokens; if sampling the batch fails, row by row, so one bad row fails alone (None)."""

        def rows(chosen: list[Sequence], rows_logits: torch.Tensor) -> list[int]:
            history = [torch.tensor(s.tokens) if s.params.uses_history else None for s in chosen]
            return sample_rows(
                rows_logits,
                [s.params for s in chosen],
                history,
                [s.n_prompt for s in chosen],
                [s.generator for s in chosen],
            )

        try:
            return rows(seqs, logits)
        except Exception:
            log.exception("sampling a batch failed; sampling its rows one by one")
        tokens: list[int | None] = []
        for i, seq in enumerate(seqs):
            try:
                tokens += rows([seq], logits[i : i + 1])
            except Exception:
                log.exception("sampling failed")
                tokens.append(None)
        return tokens

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy cache row src's first `length` positions into row dst."""
        self.cache.move(src, dst, length)

    # ------------------------------------------------------------ whole texts, no cache

    @torch.inference_mode()
    def score(self, ids: list[int], top_n: int = 0) -> list[Scored]:
        """Each byte of ids with its log-probability given the bytes before it (the first has none) and,
        with top_n, the top_n most likely bytes at its position."""
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
        if not 0 < len(ids) <= self.config.context_length:
            raise ValueError(f"text has {len(ids)} bytes; 1..{self.config.context_length} fit")
        _, attn = self.model(torch.tensor([ids], device=self.device), need_weights=True)
        return torch.stack([a[0] for a in attn]).float().cpu()

    @torch.inference_mode()
    def warmup(self) -> None:
        """Every kind of pass once (the first use of the cache op costs seconds), before any sequence is in
        the cache: what it writes into the rows is overwritten before it is ever read."""
        self.attention(list(range(8)))
        seq = Sequence(list(range(8)), 8, SamplingParams(temperature=0))
        self.prefill(seq, self.prefill_row, 0, 8)
        self.decode([seq] * min(2, self.max_batch))
