"""Operations and the page: GET /health, /metrics, /v1/model, and the attention explorer at /."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from server.deps import MetricsDep, ModelsDep, QueryModelDep
from server.errors import ErrorResponse
from server.routes.atlas import atlas_state

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["system"])


@router.get("/health", responses={503: {"model": ErrorResponse}})
async def health(models: ModelsDep):
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(metrics: MetricsDep):
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/v1/model")
async def model_info(served: QueryModelDep):
    llm, engine = served.llm, served.engine
    step = engine.runner.describe()
    atlas, atlas_note = await run_in_threadpool(atlas_state, served)  # its first read hashes files: off the loop
    return {
        "model": served.name,
        "checkpoint": str(served.checkpoint),
        "config": llm.config.to_dict(),
        "num_params": llm.model.num_params(),
        "device": str(llm.device),
        "dtype": step.pop("dtype"),
        "decode_step": {"weight_form": step.pop("weight_form"), "why": llm.form_reason, **step},
        "system_fingerprint": served.fingerprint,
        "context_length": llm.config.context_length,
        "max_batch": engine.max_batch,
        "training": llm.training_info,
        "atlas": atlas,  # {corpus, characters} or None: then atlas_note names the command that makes one
        "atlas_note": atlas_note,
    }


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC / "index.html")
