"""Request and response bodies of the OpenAI-compatible routes (OpenAI's completions API, as vLLM serves it,
and vLLM's tokenizer routes).

Unknown fields are refused, as OpenAI does. Fields some clients send with their default values (best_of,
logit_bias, suffix) are accepted only with those values. Like vLLM's top_k, TinyLLM's own utf8, heads_off and
ablation are extra fields.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from model.tokenizer import tokenizer
from server.schemas import SamplingFields, Strict, SwitchesHeadsOff, Text, Usage, unicode_text

Byte = Annotated[int, Field(ge=0, le=255)]
# The members of the prompt and stop unions (not server.schemas.Text: a validator inside a member would rename it in
# the location a refusal names, "stop.constrained-str"); the union fields' validator checks their texts.
PromptString = Annotated[str, StringConstraints(min_length=1)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class StreamOptions(Strict):
    include_usage: bool = Field(False, description="send a last chunk with usage and no choices")


class CompletionRequest(SamplingFields, SwitchesHeadsOff):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 64, "temperature": 0.8, "seed": 1},
                {"model": "shakespeare", "prompt": "To be, or not to be", "max_tokens": 0, "echo": True, "logprobs": 1},
            ]
        }
    )

    model: str = Field(description="the served model's id (GET /v1/models)")
    prompt: (
        PromptString
        | Annotated[list[PromptString], Field(min_length=1)]
        | Annotated[list[Byte], Field(min_length=1)]
        | Annotated[list[Annotated[list[Byte], Field(min_length=1)]], Field(min_length=1)]
    ) = Field(description="a string, a list of strings, byte ids, or a list of byte-id lists")
    max_tokens: int | None = Field(16, ge=0, description="bytes to generate per choice (null: up to the server's cap)")
    n: int = Field(1, ge=1, le=128, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=16)] | None = Field(
        None, description="strings that end a choice (not included in its text)"
    )
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="choice j of a prompt uses seed + j")
    logprobs: int | None = Field(
        None, ge=0, le=20, description="top alternatives per token (the chosen one is always included)"
    )
    echo: bool = Field(False, description="return the prompt before the completion")
    user: str | None = Field(None, description="accepted and ignored")
    # sent by some clients with their default values; anything else is refused
    best_of: int | None = Field(None, ge=1, description="only null or equal to n")
    logit_bias: dict[str, float] | None = Field(None, description="only null or {}")
    suffix: str | None = Field(None, description='only null or ""')

    @field_validator("prompt", "stop")
    @classmethod
    def _texts(cls, v, info: ValidationInfo):
        for item in [v] if isinstance(v, str) else v or []:
            if isinstance(item, str):
                unicode_text(item, info)
        return v

    def stop_bytes(self) -> list[bytes]:
        return [s.encode("utf-8") for s in ([self.stop] if isinstance(self.stop, str) else self.stop or [])]

    def prompts(self) -> list[tuple[str, list[int]]]:
        """Each prompt as (text, byte ids)."""
        p = self.prompt
        items = [p] if isinstance(p, str) or isinstance(p[0], int) else p
        return [(x, tokenizer.encode(x)) if isinstance(x, str) else (tokenizer.decode(x), list(x)) for x in items]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["length", "stop"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str = Field(description="what decides the bytes: the checkpoint, weight form and kernel path")
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tinyllm"
    root: str
    parent: str | None = None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------- vLLM's tokenizer routes


class TokenizePromptRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt": "Hé 🙂", "return_token_strs": True}]})

    model: str | None = Field(None, description="the served model's id, if given")
    prompt: Text = Field(description="the text to tokenize: each UTF-8 byte is a token")
    add_special_tokens: bool = Field(True, description="accepted; there are no special tokens to add")
    return_token_strs: bool = Field(False, description="also return each token's text")


class TokenizePromptResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = Field(
        None, description='as in completions\' logprobs: the character for ASCII, "\\xNN" for other bytes'
    )


class DetokenizeRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tokens": [72, 195, 169]}]})

    model: str | None = Field(None, description="the served model's id, if given")
    tokens: list[Byte] = Field(description="byte ids (0..255)")


class DetokenizeResponse(BaseModel):
    prompt: str = Field(description="the bytes as UTF-8 text; an invalid sequence becomes U+FFFD")


class TokenizerInfo(BaseModel):
    """The tokenizer's settings, in the shape of a tokenizer_config.json (as vLLM serves them)."""

    tokenizer_class: str
    vocab_size: int
    model_max_length: int
    bos_token: str | None = Field(description="the token a text's first byte is conditioned on (never added)")
    eos_token: str | None = Field(description="the token that ends a text, if any")
    pad_token: str | None
    unk_token: str | None
    add_bos_token: bool
    add_eos_token: bool
