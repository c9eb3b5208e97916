"""Choosing each sequence's next token from its logits, for a whole batch: the token, its logprob, every
log-probability and the top ones asked for.

With the native extension this is one call (model/native/sampling.h): the native step makes it inside its own
decode call (`Batch.native_args`), and logits from anywhere else (the torch step, a prefill, the exact model) go
through `Batch.choose`, which makes the same call. Python then only reads bytes and numbers. Each sequence keeps
its sampling parameters and the counts its penalties read in a native row (`Sequence.sampling_row`), updated with
the tokens added since its last step. Without the extension, model.sampling's torch and numpy code chooses (its
bits depend on torch's CPU dispatch, and the system_fingerprint says so).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from model import numerics, utf8
from model.sampling import sample_rows
from model.sequence import Sequence

log = logging.getLogger("tinyllm.runner")

_native = numerics._native  # the extension where built and current, else None


@dataclass
class Choices:
    """A batch's chosen tokens; row i is sequence i."""

    tokens: list[int]  # -1 where choosing failed
    logprobs: list[float]  # of each chosen token
    rows: torch.Tensor  # (B, vocab) float32: log-softmax of the raw logits
    top: list[list[tuple[int, float]]]  # each row's top logprobs asked for, most likely first


class Batch:
    """The sequences of one step, as the sampler reads them; sequence i is row i of the step's logits."""

    def __init__(self, seqs: list[Sequence], vocab: int):
        self.seqs, self.vocab = seqs, vocab

    def native_args(self) -> tuple[list, list[int], list[int], torch.Tensor]:
        """The native sampler's arguments: each sequence's sampling row (None where it could not be built: that
        sequence's choice fails alone), generation step and UTF-8 mask row, and the masks (model.utf8.MASKS)."""
        rows, masks = [], [s.utf8_mask for s in self.seqs]
        for seq, mask in zip(self.seqs, masks):
            try:
                if not 0 <= mask < len(utf8.MASKS):
                    raise ValueError(f"UTF-8 mask row {mask} out of range (is the sequence past its max_length?)")
                rows.append(_row(seq, self.vocab))
            except Exception:
                log.exception("building a sequence's sampling row failed")
                rows.append(None)
                masks[len(rows) - 1] = 0
        return rows, [s.generated for s in self.seqs], masks, utf8.MASKS

    def choose(self, logits: torch.Tensor) -> Choices:
        """Each sequence's next token from its row of logits (B, vocab)."""
        logits = logits.float().cpu().contiguous()  # the one host-device synchronisation per step
        if _native is None:
            return _choose_in_python(self.seqs, logits)
        return self.choices(_native.sample(logits, *self.native_args()))

    @staticmethod
    def choices(native: tuple) -> Choices:
        """Choices from what the native sampler returns: (tokens, logprobs, rows, top)."""
        return Choices(*native)


def _row(seq: Sequence, vocab: int):
    """seq's native sampling row, its history counted up to seq.tokens."""
    row = seq.sampling_row
    if row is None or seq.sampling_params is not seq.params or row.counted > len(seq.tokens):
        p = seq.params
        row = _native.SamplingRow(
            p.temperature,
            p.top_k,
            p.top_p,
            p.repetition_penalty,
            p.presence_penalty,
            p.frequency_penalty,
            p.valid_utf8,
            seq.seed % 2**64,
            seq.n_prompt,
            seq.top_logprobs,
            vocab,
        )
        seq.sampling_row, seq.sampling_params = row, p
    if row.counted < len(seq.tokens):
        row.count(seq.tokens[row.counted :])
    return row


def _choose_in_python(seqs: list[Sequence], logits: torch.Tensor) -> Choices:
    """choose() in torch and numpy (model.sampling.sample_rows)."""
    logprobs = numerics.log_softmax(logits)
    tokens = _sample(seqs, logits)
    picked = torch.tensor([max(t, 0) for t in tokens]).unsqueeze(1)  # (B, 1)
    chosen = logprobs.gather(1, picked).squeeze(1).tolist()  # each token's logprob, in one read
    asked = [i for i, seq in enumerate(seqs) if seq.top_logprobs and tokens[i] >= 0]
    top: list[list[tuple[int, float]]] = [[] for _ in seqs]
    if asked:
        values, indices = logprobs[asked].topk(max(seqs[i].top_logprobs for i in asked), dim=-1)
        for r, i in enumerate(asked):
            n = seqs[i].top_logprobs
            top[i] = list(zip(indices[r, :n].tolist(), values[r, :n].tolist()))
    return Choices(tokens, chosen, logprobs, top)


def _sample(seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
    """The batch's tokens; if sampling the batch fails, row by row, so one bad row fails alone (-1)."""

    def rows(chosen: list[Sequence], rows_logits: torch.Tensor) -> list[int]:
        return sample_rows(
            rows_logits,
            [s.params for s in chosen],
            [torch.tensor(s.tokens) if s.params.uses_history else None for s in chosen],
            [s.n_prompt for s in chosen],
            [s.seed for s in chosen],
            [s.generated for s in chosen],
            [s.utf8_mask for s in chosen],
        )

    try:
        return rows(seqs, logits)
    except Exception:
        log.exception("sampling a batch failed; sampling its rows one by one")
    tokens: list[int] = []
    for i, seq in enumerate(seqs):
        try:
            tokens += rows([seq], logits[i : i + 1])
        except Exception:
            log.exception("sampling failed")
            tokens.append(-1)
    return tokens
