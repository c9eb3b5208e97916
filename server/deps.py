"""What the routes depend on, as typed dependencies (FastAPI's `Annotated[T, Depends(...)]`).

They are coroutines, though none awaits anything: FastAPI runs a plain function dependency in a worker thread,
a round trip per dependency per request that 64 clients starting at once would queue behind."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from server.config import Settings
from server.errors import APIError
from server.limits import StreamLimit
from server.metrics import Metrics
from server.models import ServedModel, ServedModels


async def served_models(request: Request) -> ServedModels:
    """The served models, or a 503 until every one of them is loaded and warmed up."""
    models = getattr(request.app.state, "models", None)
    if models is None or not models.ready:
        raise APIError(503, "the models are still loading", "overloaded", headers={"Retry-After": "1"})
    return models


async def model_in_query(
    models: Annotated[ServedModels, Depends(served_models)],
    model: Annotated[str | None, Query(description="a model from GET /v1/models (default: the first)")] = None,
) -> ServedModel:
    """The model named by the `model` query parameter (the default one without it); 404 for an unknown name."""
    return models.get(model)


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def streams(request: Request) -> StreamLimit:
    return request.app.state.streams


ModelsDep = Annotated[ServedModels, Depends(served_models)]
QueryModelDep = Annotated[ServedModel, Depends(model_in_query)]
SettingsDep = Annotated[Settings, Depends(settings)]
MetricsDep = Annotated[Metrics, Depends(metrics)]
StreamsDep = Annotated[StreamLimit, Depends(streams)]
