"""Request and response bodies. Bounds live in the fields; unknown fields are rejected."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from model.sampling import SamplingParams


def valid_text(v: str, field: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} is not valid Unicode text (lone surrogate)") from None
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AttentionSelection(Strict):
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="layer indices (null = all)")
    heads: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="head indices (null = all)")


class GenerateRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "ROMEO:\n", "max_new_tokens": 200, "temperature": 0.8, "top_k": 40, "seed": 1},
        {"prompt": "To be, or not to be", "max_new_tokens": 64, "temperature": 0, "stream": True},
    ]})

    prompt: str = Field(min_length=1, description="the text to continue (UTF-8; each byte is a token)")
    max_new_tokens: int = Field(128, ge=0, description="bytes to generate at most")
    temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False, description="0 = greedy")
    top_k: int = Field(0, ge=0, le=256, description="keep the k most likely bytes (0 = off)")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="nucleus sampling mass (1 = off)")
    repetition_penalty: float = Field(1.0, gt=0, le=100, allow_inf_nan=False, description="1 = off")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed and parameters give the same bytes")
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=16, description="strings that end generation (not included in text)")
    logprobs: int = Field(0, ge=0, le=20, description="alternatives reported per token")
    truncate: bool = Field(False, description="keep the prompt's last bytes if it does not fit the context")
    stream: bool = Field(False, description="server-sent events, one per token")
    attention: AttentionSelection | None = Field(
        None, description="return each generated token's attention row over all earlier tokens")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        return valid_text(v, "prompt")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        return [valid_text(s, "stop") for s in v]

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.repetition_penalty)


class TopLogprob(BaseModel):
    id: int
    text: str
    logprob: float


class Token(BaseModel):
    id: int
    text: str = Field(description="display label of the byte")
    logprob: float
    top_logprobs: list[TopLogprob] = Field(default_factory=list)
    attention: list[list[list[float]]] | None = Field(
        None, description="[layer][head][key]: this token's query row over all earlier tokens")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timing(BaseModel):
    queue_ms: float
    prefill_ms: float
    decode_ms: float
    tokens_per_second: float


FinishReason = Literal["length", "stop", "context_full"]


class GenerateResponse(BaseModel):
    text: str
    tokens: list[Token]
    finish_reason: FinishReason
    usage: Usage
    timing: Timing
    truncated_prompt_tokens: int = Field(0, description="prompt bytes dropped by truncate")
    attention_layers: list[int] | None = None
    attention_heads: list[int] | None = None


class TokenizeRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "Hé 🙂"}]})
    text: str = Field(description="text to split into byte tokens")

    @field_validator("text")
    @classmethod
    def _text(cls, v):
        return valid_text(v, "text")


class TokenInfo(BaseModel):
    id: int
    text: str = Field(description="display label: the character for printable ASCII, else an escape like \\xe2")
    start: int = Field(description="offset (in characters) of the character this byte belongs to")
    end: int


class TokenizeResponse(BaseModel):
    tokens: list[TokenInfo]
    count: int
    labels: list[str] = Field(description="per byte: a whole character's label on its first byte, \"\" on the "
                                          "rest; an escape for bytes that form no character")


class AttentionRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"text": "To be, or not to be", "layers": [0], "heads": None, "aggregate": "none", "format": "json"},
        {"text": "ROMEO:", "format": "npy", "dtype": "float16"},
        {"text": "ROMEO: what light", "layers": [2], "heads": [1], "format": "png"},
    ]})

    text: str = Field(min_length=1, description="the text to analyse (its bytes are the tokens)")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="layer indices (null = all)")
    heads: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="head indices (null = all)")
    aggregate: Literal["none", "mean"] = Field("none", description="mean: average over the chosen heads")
    format: Literal["json", "npy", "png"] = "json"
    dtype: Literal["float32", "float16"] = Field("float32", description="element type of the npy body")

    @field_validator("text")
    @classmethod
    def _text(cls, v):
        return valid_text(v, "text")


class AttentionResponse(BaseModel):
    tokens: list[TokenInfo]
    layers: list[int]
    heads: list[int] | Literal["mean"]
    attention: list[list[list[list[float]]]] = Field(description="[layer][head][query][key] probabilities")
