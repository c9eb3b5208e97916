"""Shared fixtures: a tiny random checkpoint on disk, and the `gpu` marker's skip."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import checkpoint
from model.config import ModelConfig
from model.model import Transformer

TINY_CONFIG = ModelConfig(context_length=64, n_layer=2, n_head=2, d_model=32, mlp_hidden=64)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A random tiny model in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY_CONFIG.to_dict(), **overrides})
    return Transformer(cfg).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder (config.json, model.safetensors, training.json) of a tiny random model, seed 0."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    training = {"step": 0, "bytes_seen": 0, "val_loss": None, "note": "random weights for tests", "seed": 0}
    checkpoint.save(path, tiny_model(seed=0), training=training)
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
