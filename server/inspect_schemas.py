"""Request and response bodies of the inspection routes: one head step by step, the logit lens, direct logit
attribution and ablation (server/routes/inspect.py). Every request can switch heads off (SwitchesHeadsOff)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from model.tokenizer import VOCAB_SIZE
from model.trace import Ablation
from server.schemas import ChoosesModel, Contribution, HeadPair, SwitchesHeadsOff, Text, TextByte


class InspectsText(ChoosesModel, SwitchesHeadsOff):
    text: Text = Field(min_length=1, description="the text to look into (its bytes are the tokens)")


class Inspected(BaseModel):
    """What every inspection answer says about its input."""

    model: str
    tokens: list[TextByte]
    heads_off: list[HeadPair]
    ablation: Ablation


# ---------------------------------------------------------------- POST /v1/attention/explain


class ExplainRequest(InspectsText):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"text": "The cat sat on the mat", "layer": 2, "head": 1, "query": 21},
                {"text": "Grüße, 世界", "layer": 0, "head": 3, "query": 8, "query_unit": "character"},
            ]
        }
    )

    layer: int = Field(ge=0, description="the layer of the head")
    head: int = Field(ge=0, description="the head within the layer")
    query: int = Field(ge=0, description="the querying byte's index (or character's, with query_unit character)")
    query_unit: Literal["byte", "character"] = Field(
        "byte", description="character: query counts characters, and the walkthrough is that character's last byte's"
    )


class ExplainChecks(BaseModel):
    weights_vs_attention: float = Field(
        description="max |weights − the layer's attention row for this head and query| (the explicit softmax that "
        "POST /v1/attention serves)"
    )
    z_vs_run: float | None = Field(description="max |z − the head's output in the run|; null when it was switched off")
    writes_plus_input_vs_residual: float = Field(
        description="max |Σ over the layer's heads of their writes + the block's input − the residual after attention|"
    )


class ExplainResponse(Inspected):
    layer: int
    head: int
    query: int = Field(description="the querying byte's index")
    query_character: int = Field(description="the index of the character the query byte belongs to")
    head_dim: int
    sqrt_d_k: float
    q_before_rope: list[float] = Field(description="h_query · W_Qᵀ (this head's rows)")
    q: list[float] = Field(description="the query after RoPE")
    keys: list[list[float]] = Field(description="[byte][dim]: every byte's key after RoPE (later bytes are masked)")
    raw_scores: list[float | None] = Field(
        description="per byte: q·k; null after the query (masked: the softmax sees −∞ there)"
    )
    scaled_scores: list[float | None] = Field(
        description="per byte: q·k / √d_k; null after the query (masked: the softmax sees −∞ there)"
    )
    mask: list[bool] = Field(description="per byte: true where the query may attend (bytes 0..query)")
    weights: list[float] = Field(description="per byte: softmax of the masked scaled scores (0 where masked)")
    values: list[list[float]] = Field(description="[byte][dim]: every byte's value vector")
    z: list[float] = Field(description="Σ weights·values: the head's output")
    write: list[float] = Field(description="z · W_O's columns for this head: what it adds to the residual stream")
    block_input_norm: float = Field(description="‖the residual stream at the query before this block‖")
    write_norm: float = Field(description="‖write‖")
    switched_off: bool = Field(description="the head is in heads_off: the run replaced its write")
    checks: ExplainChecks


# ---------------------------------------------------------------- POST /v1/lens


class LensRequest(InspectsText):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "The cat sat on the mat", "top_k": 5}]})

    top_k: int = Field(5, ge=1, le=20, description="most likely next bytes reported per stage and position")


class LensResponse(Inspected):
    stages: list[str] = Field(description='where the residual stream is read: "embedding", "0.attention", "0.mlp", …')
    top_ids: list[list[list[int]]] = Field(description="[stage][position][k]: the most likely next bytes")
    top_probs: list[list[list[float]]] = Field(description="[stage][position][k]: their probabilities")
    next_rank: list[list[int]] = Field(
        description="[stage][position]: rank of the byte that comes next (1 = most likely), positions 0..T-2"
    )
    next_prob: list[list[float]] = Field(description="[stage][position]: its probability")
    bits_per_byte: list[float | None] = Field(description="per stage: the mean of −log₂ p(next byte); null for 1 byte")
    byte_labels: list[str] = Field(description="the display label of each byte value 0..255, for top_ids")


# ---------------------------------------------------------------- POST /v1/next-byte


class NextByteRequest(InspectsText):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "The cat sat on the m", "position": 19}]})

    position: int | None = Field(
        None, ge=0, description="the byte after which the next byte is predicted (null = the last)"
    )


class NextByteResponse(Inspected):
    position: int
    ids: list[int] = Field(description="every byte value 0..255, most likely first")
    probs: list[float] = Field(
        description="their probabilities: the exact model's softmax of its logits (temperature 1)"
    )
    labels: list[str] = Field(description="the display label of each byte in ids")


# ---------------------------------------------------------------- POST /v1/attribute


class AttributeRequest(InspectsText):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "The cat sat on the mat", "position": 20}]})

    position: int = Field(ge=0, description="the byte whose next-byte logit is split (its index)")
    target: int | None = Field(
        None, ge=0, lt=VOCAB_SIZE, description="the byte whose logit is split (null = the byte that comes next)"
    )
    top: int = Field(10, ge=1, le=1000, description="largest pushes listed in `top`")


class AttributeResponse(Inspected):
    position: int
    target: int
    target_text: str = Field(description="the target byte's label")
    logit: float = Field(description="the model's logit of the target at the position")
    norm_scale: float = Field(description="the final RMSNorm's 1/√(mean(x²) + ε) at the position, from the run")
    embedding: float
    heads: list[list[float]] = Field(description="[layer][head]: each head's push")
    mlps: list[float] = Field(description="[layer]: each MLP's push")
    total: float = Field(description="the sum of every push")
    residual_error: float = Field(description="logit − total (float rounding: RMSNorm leaves no constant)")
    top: list[Contribution] = Field(description="the largest pushes by size, either sign")


# ---------------------------------------------------------------- POST /v1/ablate


class AblateRequest(InspectsText):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "The cat sat on the mat", "heads_off": [[0, 1]], "ablation": "zero"}]}
    )

    heads_off: list[HeadPair] = Field(  # required here: switching heads off is the point
        max_length=4096, description="[layer, head] pairs to switch off (each at most once)"
    )


class AblateResponse(Inspected):
    loss_bits: list[float | None] = Field(
        description="per byte: −log₂ p(byte | bytes before), every head on; null for the first"
    )
    loss_bits_ablated: list[float | None] = Field(description="the same with heads_off switched off")
    bits_per_byte: float
    bits_per_byte_ablated: float
    change_bits_per_byte: float = Field(description="bits_per_byte_ablated − bits_per_byte")
