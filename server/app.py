"""The ASGI app: create_app assembles settings, the model and its engine, middleware and the routers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from model.api import TinyLLM
from model.runner import Runner
from server.auth import install_auth
from server.config import Settings
from server.deps import ServedModel
from server.engine import Engine
from server.errors import install_handlers
from server.limits import BodySizeLimit, StreamLimit
from server.metrics import CountRequests, Metrics
from server.routes import attention, generate, openai, openai_tokenizer, system, tokenize
from server.routes.system import STATIC

log = logging.getLogger("tinyllm.server")


def create_app(settings: Settings, llm: TinyLLM | None = None) -> FastAPI:
    """The app. `llm` is loaded from settings.checkpoint when not given; its engine starts with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.threads:
            torch.set_num_threads(settings.threads)
        model = llm or TinyLLM.load(settings.checkpoint, settings.device, settings.dtype)
        engine = Engine(Runner(model.model, settings.max_batch), settings.max_queue, settings.prefill_chunk)
        engine.start()
        app.state.served = ServedModel(settings.checkpoint, model, engine)
        log.info(
            "serving %s on %s (%s), %d parameters",
            settings.checkpoint,
            model.device,
            engine.runner.dtype,
            model.model.num_params(),
        )
        yield
        engine.stop()

    app = FastAPI(
        title="TinyLLM",
        version="0.1.0",
        lifespan=lifespan,
        description="A byte-level transformer: generate text and look at its attention.",
    )
    app.state.settings = settings
    app.state.streams = StreamLimit(settings.max_streams)
    app.state.metrics = metrics = Metrics(lambda: getattr(getattr(app.state, "served", None), "engine", None))
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
    for module in (system, generate, attention, tokenize, openai, openai_tokenizer):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
