"""Shared fixtures: a tiny random checkpoint on disk, an in-process app client, and the `gpu` skip."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from model import checkpoint
from server.app import create_app
from server.config import Settings
from server.process import running_server
from support import tiny_model, wait_healthy


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder (config.json, model.safetensors, training.json) of a tiny random model, seed 0."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    training = {"step": 0, "bytes_seen": 0, "val_loss": None, "note": "random weights for tests", "seed": 0}
    checkpoint.save(path, tiny_model(seed=0), training=training)
    return path


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    """A live server on the tiny checkpoint, one per test module (modules that need other flags define their own)."""
    with running_server(tiny_checkpoint) as s:
        yield s


@pytest.fixture(scope="session")
def app_client():
    """app_client(checkpoint, **settings): the app in process (its lifespan and engine run), once healthy."""

    @contextlib.contextmanager
    def make(checkpoint_dir: Path, **overrides):
        settings = Settings(
            _env_file=None, checkpoint=checkpoint_dir, device="cpu", dtype="float32", api_key=None, **overrides
        )
        with TestClient(create_app(settings)) as client:
            wait_healthy(client)
            yield client

    return make


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
