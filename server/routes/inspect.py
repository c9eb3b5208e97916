"""Looking inside, step by step: one head's arithmetic (POST /v1/attention/explain), the logit lens (POST /v1/lens),
the whole next-byte distribution after one byte (POST /v1/next-byte), direct logit attribution (POST /v1/attribute)
and ablation (POST /v1/ablate).

Each route checks its request, then awaits an inspection job (server/inspection.py) that the model's engine runs
between decode steps (Engine.inspect): a run of the exact model with the request's heads switched off, read by
model/explain.py, lens.py, attribution.py or ablation.py; nothing another request reads is touched. The model's last
run is kept, so the page's clicks on other heads and bytes of the same text cost no forward pass. Every answer
starts with the same fields (Inspected: the model, the text's bytes, the heads switched off and how) and is encoded
by orjson; explain's vectors go to it as float32 arrays, written as the shortest decimals that read back as the same
float32 (about half the bytes of float64 digits, and faster to write and read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from fastapi import APIRouter, Response

from model.tokenizer import VOCAB_SIZE, char_spans, tokenizer
from model.trace import Head
from server.checks import check_indices, checked_text
from server.deps import ModelsDep
from server.errors import ERROR_RESPONSES, APIError
from server.inspect_schemas import (
    AblateRequest,
    AblateResponse,
    AttributeRequest,
    AttributeResponse,
    Contribution,
    ExplainChecks,
    ExplainRequest,
    ExplainResponse,
    Inspected,
    InspectsText,
    LensRequest,
    LensResponse,
    NextByteRequest,
    NextByteResponse,
)
from server.inspection import Ablate, Attribute, ExplainHead, Inspection, LogitLens, Result
from server.models import ServedModel
from server.responses import json_response
from server.schemas import text_bytes

router = APIRouter(tags=["inspect"])


@dataclass
class Asked:
    """An inspection request checked against its model: the served model, the text's bytes, the heads to switch off."""

    body: InspectsText
    served: ServedModel
    ids: list[int]
    heads_off: list[Head]

    @classmethod
    def check(cls, body: InspectsText, models: ModelsDep) -> Asked:
        return cls(body, *checked_text(body, models))

    async def run(self, job: type[Inspection[Result]], **what) -> Result:
        """The job of this text, heads off and ablation, and `what` it reads, run by the model's engine."""
        return await self.served.engine.inspect(
            job(ids=self.ids, heads_off=self.heads_off, ablation=self.body.ablation, **what)
        )

    def answer(self, response: type[Inspected], validate: bool = True, **fields) -> Response:
        """The response model's JSON: the fields every answer starts with, then `fields`. Nested models go by their
        fields (vars), float32 arrays in the shortest float32 digits. validate=False builds it without validation
        (model_construct), so that arrays stay arrays for orjson to write."""
        build = response if validate else response.model_construct
        body = build(
            model=self.served.name,
            tokens=text_bytes(self.body.text),
            heads_off=self.heads_off,
            ablation=self.body.ablation,
            **fields,
        )
        return json_response(body)


def float32(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


def unmasked(t: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """float32, with NaN where the mask hides the byte: orjson writes NaN as null, so a masked score reads as no
    number at all (the softmax sees −∞ there), not as the finite q·k it would have been."""
    return float32(t.float().masked_fill(~mask, float("nan")))


def byte_index(value: int, n: int, param: str, unit: str = "byte") -> int:
    if value >= n:
        raise APIError(400, f"{param} {value} out of range: the text has {n} {unit}s (0..{n - 1})", param=param)
    return value


@router.post("/v1/attention/explain", response_model=ExplainResponse, responses=ERROR_RESPONSES)
async def explain_head(body: ExplainRequest, models: ModelsDep):
    """One head's softmax(q·kᵀ/√d_k)·V for one query byte, every step with the model's own numbers, and checks."""
    asked = Asked.check(body, models)
    cfg = asked.served.engine.config
    check_indices([body.layer], cfg.n_layer, "layer")
    check_indices([body.head], cfg.n_head, "head")
    spans = char_spans(asked.ids)  # [start, end) of each character, in bytes
    if body.query_unit == "character":  # the character's last byte: the one that has read all of it
        character = byte_index(body.query, len(spans), "query", "character")
        query = spans[character][1] - 1
    else:
        query = byte_index(body.query, len(asked.ids), "query")
        character = next(c for c, (start, end) in enumerate(spans) if start <= query < end)
    w = await asked.run(ExplainHead, layer=body.layer, head=body.head, query=query)
    return asked.answer(
        ExplainResponse,
        validate=False,  # the vectors stay float32 arrays
        layer=w.layer,
        head=w.head,
        query=w.query,
        query_character=character,
        head_dim=cfg.head_dim,
        sqrt_d_k=w.sqrt_d_k,
        q_before_rope=float32(w.q_before_rope),
        q=float32(w.q),
        keys=float32(w.keys),
        raw_scores=unmasked(w.raw_scores, w.mask),
        scaled_scores=unmasked(w.scaled_scores, w.mask),
        mask=w.mask.cpu().numpy(),
        weights=float32(w.weights),
        values=float32(w.values),
        z=float32(w.z),
        write=float32(w.write),
        block_input_norm=float(w.block_input.norm()),
        write_norm=float(w.write.norm()),
        switched_off=w.switched_off,
        checks=ExplainChecks(
            weights_vs_attention=w.weights_vs_attention,
            z_vs_run=w.z_vs_run,
            writes_plus_input_vs_residual=w.writes_plus_input_vs_residual,
        ),
    )


@router.post("/v1/lens", response_model=LensResponse, responses=ERROR_RESPONSES)
async def lens(body: LensRequest, models: ModelsDep):
    """The logit lens: the next-byte distribution read from the residual stream after every layer."""
    asked = Asked.check(body, models)
    out = await asked.run(LogitLens, top_k=body.top_k)
    return asked.answer(
        LensResponse,
        stages=out.stages,
        top_ids=out.top_ids.tolist(),
        top_probs=out.top_probs.tolist(),
        next_rank=out.next_rank.tolist(),
        next_prob=out.next_prob.tolist(),
        bits_per_byte=out.bits_per_byte,
        byte_labels=[tokenizer.label(b) for b in range(VOCAB_SIZE)],
    )


@router.post("/v1/next-byte", response_model=NextByteResponse, responses=ERROR_RESPONSES)
async def next_byte(body: NextByteRequest, models: ModelsDep):
    """The model's probability of every byte coming next after one byte of the text: the logit lens's last stage
    (the model's own output), all 256 bytes, so that temperature, top-k and top-p can be applied to all of them."""
    asked = Asked.check(body, models)
    position = len(asked.ids) - 1 if body.position is None else byte_index(body.position, len(asked.ids), "position")
    out = await asked.run(LogitLens, top_k=VOCAB_SIZE)
    ids = out.top_ids[-1, position].tolist()  # the last stage: after the final norm, the model's own distribution
    return asked.answer(
        NextByteResponse,
        position=position,
        ids=ids,
        probs=out.top_probs[-1, position].tolist(),
        labels=[tokenizer.label(b) for b in ids],
    )


@router.post("/v1/attribute", response_model=AttributeResponse, responses=ERROR_RESPONSES)
async def attribute_logit(body: AttributeRequest, models: ModelsDep):
    """Direct logit attribution: each head's, each MLP's and the embedding's push on one byte's logit."""
    asked = Asked.check(body, models)
    position = byte_index(body.position, len(asked.ids), "position")
    if body.target is None and position == len(asked.ids) - 1:
        raise APIError(
            400, f"position {position} is the text's last byte: nothing comes after it; name a target", param="target"
        )
    a = await asked.run(Attribute, position=position, target=body.target)
    return asked.answer(
        AttributeResponse,
        position=a.position,
        target=a.target,
        target_text=tokenizer.label(a.target),
        logit=a.logit,
        norm_scale=a.scale,
        embedding=a.embedding,
        heads=a.heads.tolist(),
        mlps=a.mlps.tolist(),
        total=a.total,
        residual_error=a.error,
        top=[Contribution(kind=c.kind, layer=c.layer, head=c.head, logit=c.logit) for c in a.top(body.top)],
    )


@router.post("/v1/ablate", response_model=AblateResponse, responses=ERROR_RESPONSES)
async def ablate(body: AblateRequest, models: ModelsDep):
    """Each byte's loss with every head, and with heads_off switched off; the change in bits per byte."""
    asked = Asked.check(body, models)
    if len(asked.ids) < 2:
        raise APIError(400, "text is 1 byte; a loss needs at least 2 (the first byte has no prediction)", param="text")
    out = await asked.run(Ablate)
    return asked.answer(
        AblateResponse,
        loss_bits=[None, *out.bits.tolist()],
        loss_bits_ablated=[None, *out.bits_ablated.tolist()],
        bits_per_byte=out.bits_per_byte,
        bits_per_byte_ablated=out.bits_per_byte_ablated,
        change_bits_per_byte=out.change,
    )
