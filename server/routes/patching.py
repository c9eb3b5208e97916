"""POST /v1/patch: activation patching between two texts of equal byte length (model/patching.py), run as a job on
the model's engine (server/across_jobs.py)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter
from pydantic import ConfigDict, Field

from model.tokenizer import tokenizer
from server.across_jobs import Patch
from server.checks import one_byte, text_ids
from server.deps import ModelsDep
from server.errors import ERROR_RESPONSES, APIError
from server.schemas import ChoosesModel, Text, text_bytes

router = APIRouter(tags=["inspect"])


class PatchRequest(ChoosesModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"clean": "ROMEO: ... ROME", "corrupt": "JULIO: ... ROME", "target": "O"}]}
    )

    clean: Text = Field(min_length=1, description="the text whose next byte is restored")
    corrupt: Text = Field(min_length=1, description="the text patched into, of the same length in bytes")
    target: int | str | None = Field(
        None, description="a byte (0..255 or a one-byte character); default: the clean run's most likely next byte"
    )
    foil: int | str | None = Field(
        None, description="the byte compared with; default: the corrupt run's most likely next byte other than target"
    )


def nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(v) else float(v) for v in row] for row in a]


@router.post("/v1/patch", responses=ERROR_RESPONSES)
async def activation_patching(body: PatchRequest, models: ModelsDep):
    """For every layer × position of the residual stream and every head: the fraction of the clean-vs-corrupt logit
    difference (logit[target] − logit[foil] at the last position) that patching it from clean into corrupt restores."""
    served = models.get(body.model)
    cfg = served.engine.config
    clean, corrupt = text_ids(body.clean, cfg, "clean"), text_ids(body.corrupt, cfg, "corrupt")
    if len(clean) != len(corrupt):
        raise APIError(
            400,
            f"corrupt is {len(corrupt)} bytes and clean {len(clean)}: patching needs equal lengths",
            param="corrupt",
        )
    target, foil = one_byte(body.target, "target"), one_byte(body.foil, "foil")
    if target is not None and target == foil:
        raise APIError(400, "foil is the target: the difference would be 0", param="foil")
    out = await served.engine.inspect(Patch(ids=clean, heads_off=[], corrupt=corrupt, target=target, foil=foil))
    return {
        "model": served.name,
        "clean_tokens": text_bytes(body.clean),
        "corrupt_tokens": text_bytes(body.corrupt),
        "target": out.target,
        "target_text": tokenizer.label(out.target),
        "foil": out.foil,
        "foil_text": tokenizer.label(out.foil),
        "clean_logit_diff": out.clean_logit_diff,
        "corrupt_logit_diff": out.corrupt_logit_diff,
        "residual": nan_to_none(out.residual),
        "heads": nan_to_none(out.heads),
        "residual_logit_diff": out.residual_logit_diff.tolist(),
        "heads_logit_diff": out.heads_logit_diff.tolist(),
    }
