"""The ASGI app: create_app assembles settings, the models and their engines, middleware and the routers."""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from model.api import TinyLLM
from server.auth import install_auth
from server.config import Settings
from server.errors import install_handlers
from server.limits import BodySizeLimit, StreamLimit
from server.metrics import CountRequests, Metrics
from server.models import ServedModels, load_checkpoints
from server.routes import attention, generate, inspect, openai, openai_tokenizer, system, tokenize
from server.routes.system import STATIC

log = logging.getLogger("tinyllm.server")


def writable_folder(path: Path) -> Path:
    """path, created if need be; or, where it cannot be written (a read-only root filesystem, as in the
    Kubernetes manifests), a folder under the temporary one. torch's compiler creates its cache folder on import,
    and the first forward pass imports it, so an unwritable one would stop the server."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "tinyllm-cache"
    log.warning("cache folder %s cannot be written; using %s (not kept between starts)", path, fallback)
    return fallback


def create_app(settings: Settings, llms: dict[Path, TinyLLM] | None = None) -> FastAPI:
    """The app. `llms` (checkpoint folder -> loaded model) are loaded from settings.checkpoint when not given;
    each model's engine starts with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.threads or max(1, len(os.sched_getaffinity(0)) - 1))
        settings.cache_dir = writable_folder(settings.cache_dir)
        # Inductor keeps compiled code here, so that a restart loads it instead of compiling again.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(settings.cache_dir / "inductor"))
        models = ServedModels(llms or load_checkpoints(settings), settings)
        models.start()
        app.state.models = models
        yield
        models.stop()

    app = FastAPI(
        title="TinyLLM",
        version="0.1.0",
        lifespan=lifespan,
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
    for module in (system, generate, attention, inspect, tokenize, openai, openai_tokenizer):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
