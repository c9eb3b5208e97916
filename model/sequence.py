"""A sequence as the runner sees it (its tokens, how to choose the next one, its UTF-8 state) and what the runner
gives back for each chosen token."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model import trace, utf8
from model.attribution import Attribution
from model.sampling import SamplingParams


@dataclass
class Sequence:
    """One sequence as the runner sees it: its tokens so far and how to choose the next one."""

    tokens: list[int]  # the prompt, then the generated tokens
    n_prompt: int
    params: SamplingParams = SamplingParams()
    seed: int = 0  # with the generation step, all a draw depends on (model.sampling.exponential_noise)
    top_logprobs: int = 0  # alternatives to report with each token
    attention: tuple[list[int], list[int]] | None = None  # (layers, heads) whose attention rows to report
    heads_off: list[trace.Head] = field(default_factory=list)  # heads switched off (zeros): the exact model
    explain: bool = False  # split each chosen byte's logit by what pushed it (model.attribution): the exact model
    max_length: int = 0  # the most tokens it may hold (prompt + max_new_tokens, at most the context); 0: no limit
    utf8_state: int = utf8.START  # of the tokens so far (model.utf8); kept by append()
    # the native sampler's row (model.choice): its parameters and the counts its penalties read, and the params
    # it was built from (a new row if they change)
    sampling_row: object = field(default=None, init=False, repr=False, compare=False)
    sampling_params: SamplingParams | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.params.valid_utf8:
            state = utf8.state_after_window(self.tokens)
            if state is None:
                raise ValueError("the prompt is not valid UTF-8 (sample with valid_utf8=False to continue it)")
            self.utf8_state = state

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def exact(self) -> bool:
        """Whether it runs in the exact model, alone (prefill_exact, decode_exact) rather than in the batched step."""
        return bool(self.heads_off) or self.explain

    def append(self, token: int) -> None:
        self.tokens.append(token)
        if self.params.valid_utf8:
            self.utf8_state = utf8.advance(self.utf8_state, token)

    @property
    def utf8_mask(self) -> int:
        """The row of model.utf8.MASKS its next byte is sampled under (with the UTF-8 rule): what keeps the text
        valid, and no character started that max_length would cut."""
        room = self.max_length - len(self.tokens) if self.max_length else 4
        return utf8.mask_row(self.utf8_state, room)


@dataclass
class TokenOutput:
    """A chosen token, with what the model said about it."""

    token: int
    logprob: float  # logprobs[token]
    logprobs: torch.Tensor  # (vocab,) float32 on the CPU: log-softmax of the raw logits
    top_logprobs: list[tuple[int, float]]  # the most likely tokens, most likely first
    attention: list[torch.Tensor] | None  # per chosen layer (chosen heads, keys): the row that chose it
    explain: Attribution | None = None  # with Sequence.explain: the pushes on its logit where it was chosen
