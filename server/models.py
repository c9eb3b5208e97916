"""The served models: one per checkpoint, each with its own runner and engine (its own KV cache and worker thread).

A model's name is its checkpoint folder's name ("shakespeare"): the `model` field of both APIs. The first model
given is the default of the native API.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model import checkpoint
from model.api import TinyLLM
from model.checkpoint import CheckpointError
from model.runner import Runner
from server.config import Settings
from server.engine import Engine
from server.errors import APIError

log = logging.getLogger("tinyllm.server")


def model_name(path: Path) -> str:
    return os.path.basename(os.path.abspath(path)) or "tinyllm"


def find_checkpoints(paths: list[Path]) -> list[Path]:
    """The checkpoint folders to serve, in order: each path that is a checkpoint, and for a folder of checkpoints
    the checkpoints in it, sorted by name. A folder met twice is served once, where it came first (so
    `shakespeare,.` puts shakespeare first, then the rest of the folder). CheckpointError when two different
    folders would have the same name."""
    found = []
    for path in paths:
        if checkpoint.exists(path) or not path.is_dir():
            found.append(path)  # a missing or broken checkpoint: loading it names the file and the problem
            continue
        inside = sorted(
            p
            for p in path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.suffix not in (".tmp", ".old") and checkpoint.exists(p)
        )
        if not inside:
            raise CheckpointError(
                f"{path}: neither a checkpoint (no {checkpoint.CONFIG}) nor a folder of checkpoint folders"
            )
        found += inside
    seen: dict[str, Path] = {}
    for path in found:
        name = model_name(path)
        if name in seen and seen[name].resolve() != path.resolve():
            raise CheckpointError(
                f"two checkpoints would both be served as the model {name!r}: {seen[name]} and {path} "
                "(a model is named after its folder: rename one)"
            )
        seen.setdefault(name, path)
    return list(seen.values())


def load_checkpoints(settings: Settings) -> dict[Path, TinyLLM]:
    """Every checkpoint the settings name, loaded; CheckpointError names the first that cannot be."""
    return {path: TinyLLM.load(path, settings.device, settings.dtype) for path in find_checkpoints(settings.checkpoint)}


@dataclass
class ServedModel:
    """A loaded checkpoint and the engine that serves it."""

    name: str
    checkpoint: Path
    llm: TinyLLM
    engine: Engine

    @property
    def created(self) -> int:
        try:
            return int(os.path.getmtime(self.checkpoint))
        except OSError:
            return 0


class ServedModels:
    """The served models by name, in the order given; the first is the default."""

    def __init__(self, llms: dict[Path, TinyLLM], settings: Settings):
        self.by_name = {
            model_name(path): ServedModel(
                model_name(path),
                path,
                llm,
                Engine(Runner(llm.model, settings.max_batch), settings.max_queue, settings.prefill_chunk),
            )
            for path, llm in llms.items()
        }
        self.default = next(iter(self.by_name.values()))

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.by_name.values())

    @property
    def ready(self) -> bool:
        """Every engine has run its warm-up forward pass."""
        return all(m.engine.ready.is_set() for m in self)

    def get(self, name: str | None) -> ServedModel:
        """The model called `name` (None: the default), or a 404 naming it and the served ones."""
        if name is None:
            return self.default
        if name not in self.by_name:
            served = ", ".join(f"`{n}`" for n in self.by_name)
            raise APIError(
                404,
                f"The model `{name}` does not exist. This server serves {served}.",
                param="model",
                code="model_not_found",
            )
        return self.by_name[name]

    def start(self) -> None:
        for m in self:
            m.engine.start()
            log.info(
                "serving %s from %s on %s (%s), %d parameters",
                m.name,
                m.checkpoint,
                m.llm.device,
                m.engine.runner.dtype,
                m.llm.model.num_params(),
            )

    def stop(self) -> None:
        for m in self:
            m.engine.stop()
