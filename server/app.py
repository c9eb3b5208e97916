"""The ASGI app: create_app assembles settings, the models and their engines, middleware and the routers."""

from __future__ import annotations

import gc
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from model.api import TinyLLM
from server.auth import install_auth
from server.config import Settings
from server.docs_pages import install_docs, install_served_model_examples
from server.errors import UnexpectedErrors, install_handlers
from server.limits import BodySizeLimit, StreamLimit
from server.metrics import CountRequests, Metrics
from server.models import ServedModels, load_checkpoints
from server.responses import JSON
from server.routes import (
    atlas,
    attention,
    contexts,
    detectors,
    generate,
    inspect,
    openai,
    openai_tokenizer,
    patching,
    system,
    tokenize,
)
from server.routes.system import STATIC

log = logging.getLogger("tinyllm.server")


def create_app(settings: Settings, llms: dict[Path, TinyLLM] | None = None) -> FastAPI:
    """The app. `llms` (checkpoint folder -> loaded model) are loaded from settings.checkpoint when not given;
    each model's engine starts with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.threads or max(1, len(os.sched_getaffinity(0)) - 1))
        models = ServedModels(llms or load_checkpoints(settings), settings)
        models.start()
        app.state.models = models
        # Everything loaded so far lives as long as the server: out of the cyclic collector's way, so that its
        # passes (which every step's short-lived objects trigger) do not walk torch's and the app's objects.
        gc.freeze()
        yield
        models.stop()

    app = FastAPI(
        title="TinyLLM",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSON,  # orjson: non-finite numbers as null
        docs_url=None,  # /docs and /redoc from this server's files (server/docs_pages.py), not a CDN
        redoc_url=None,
        description="A byte-level transformer: generate text and look at its attention.",
    )
    app.state.settings = settings
    app.state.streams = StreamLimit(settings.max_streams)
    app.state.metrics = metrics = Metrics(lambda: {m.name: m.engine for m in getattr(app.state, "models", ())})
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CountRequests, metrics=metrics)
    install_handlers(app)
    install_auth(app, settings)
    if settings.cors_origins:  # off unless configured; outermost, so preflights are answered before auth
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(UnexpectedErrors)  # outermost: whatever fails inside answers the envelope
    for module in (
        system,
        generate,
        attention,
        inspect,
        atlas,
        patching,
        detectors,
        contexts,
        tokenize,
        openai,
        openai_tokenizer,
    ):
        app.include_router(module.router)
    install_docs(app)  # before /static: its assets live under /static/docs
    install_served_model_examples(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
