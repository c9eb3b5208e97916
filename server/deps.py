"""What the routes depend on, as typed dependencies (FastAPI's `Annotated[T, Depends(...)]`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from model.api import TinyLLM
from server.config import Settings
from server.engine import Engine
from server.errors import APIError
from server.limits import StreamLimit
from server.metrics import Metrics


@dataclass
class ServedModel:
    """A loaded checkpoint and the engine that serves it."""

    checkpoint: Path
    llm: TinyLLM
    engine: Engine

    @property
    def name(self) -> str:
        """The checkpoint folder's name, e.g. "shakespeare": the `model` id of the OpenAI routes."""
        return os.path.basename(os.path.abspath(self.checkpoint)) or "tinyllm"

    @property
    def created(self) -> int:
        try:
            return int(os.path.getmtime(self.checkpoint))
        except OSError:
            return 0


def served_model(request: Request) -> ServedModel:
    """The served model, or a 503 while it is still loading."""
    served = getattr(request.app.state, "served", None)
    if served is None or not served.engine.ready.is_set():
        raise APIError(503, "the model is still loading", "overloaded", headers={"Retry-After": "1"})
    return served


def engine(request: Request) -> Engine:
    return served_model(request).engine


def settings(request: Request) -> Settings:
    return request.app.state.settings


def metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def streams(request: Request) -> StreamLimit:
    return request.app.state.streams


ServedDep = Annotated[ServedModel, Depends(served_model)]
EngineDep = Annotated[Engine, Depends(engine)]
SettingsDep = Annotated[Settings, Depends(settings)]
MetricsDep = Annotated[Metrics, Depends(metrics)]
StreamsDep = Annotated[StreamLimit, Depends(streams)]
