"""The served models: one per checkpoint, each with its own runner and engine (its own KV cache and worker thread).

A model's name is its checkpoint folder's name ("shakespeare"): the `model` field of both APIs. The first model
given is the default of the native API.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from model import checkpoint
from model.api import TinyLLM, resolve_device
from model.atlas import ATLAS_JSON
from model.atlas_store import Atlas, AtlasMissing
from model.checkpoint import CheckpointError
from model.native import step as native
from model.runner import Runner
from server.config import Settings
from server.engine import Engine
from server.errors import APIError

log = logging.getLogger("tinyllm.server")

EXACT_ROWS = 2  # requests a model runs in its exact model at once (heads switched off, tokens explained)


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
    """Every checkpoint the settings name, loaded; CheckpointError names the first that cannot be.

    On a CPU the model itself stays float32 (scoring and attention maps are exact) and --dtype is the weight form
    generation runs in. On CUDA --dtype is the model's dtype."""
    device = resolve_device(settings.device)
    if device.type == "cpu" and settings.dtype == "float16":
        raise CheckpointError("--dtype float16 is for CUDA; on a CPU choose auto, float32, bfloat16 or int8")
    if device.type != "cpu" and settings.dtype == "int8":
        raise CheckpointError("--dtype int8 is a CPU weight form; on CUDA choose auto, float32, bfloat16 or float16")
    try:
        native.check_kernels(settings.kernels)
    except ValueError as e:
        raise CheckpointError(f"--kernels {settings.kernels}: {e}") from None
    if device.type == "cpu":
        dtype, form = "float32", settings.dtype
    else:
        dtype, form = settings.dtype, "auto"
    return {path: TinyLLM.load(path, device, dtype, form) for path in find_checkpoints(settings.checkpoint)}


@dataclass
class ServedModel:
    """A loaded checkpoint and the engine that serves it."""

    name: str
    checkpoint: Path
    llm: TinyLLM
    engine: Engine
    fingerprint: str  # OpenAI's system_fingerprint: what decides the bytes (Runner.fingerprint)
    weights_sha256: str  # checkpoint.content_sha256 of the checkpoint as it was loaded: the weights served
    # (its file's mtime, the atlas or why there is none): a missing or stale atlas is not looked for again until its
    # file changes
    _atlas: tuple[float | None, Atlas | str] | None = field(default=None, repr=False)
    _atlas_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def atlas(self) -> Atlas:
        """The checkpoint's attention atlas (model/atlas_store.py), loaded once per version of its file; a 404 naming
        the command that makes it when there is none, or when it was made for other weights than those served. The
        weights' hash is the one taken at start-up: hashing the file for each request would read the whole checkpoint
        each time a model without an atlas is asked (on the event loop, for /v1/detectors), and would check the atlas
        against whatever the file holds now, not against the weights this server loaded."""
        try:
            mtime = (Path(self.checkpoint) / ATLAS_JSON).stat().st_mtime
        except OSError:
            mtime = None
        with self._atlas_lock:
            if self._atlas is None or self._atlas[0] != mtime:
                cfg = self.llm.config
                try:
                    found = Atlas.load(self.checkpoint, cfg.n_layer, cfg.n_head, self.weights_sha256)
                except AtlasMissing as e:
                    found = str(e)
                self._atlas = (mtime, found)
            found = self._atlas[1]
        if isinstance(found, str):
            raise APIError(404, found, "not_found", param="model")
        return found

    @property
    def created(self) -> int:
        try:
            return int(os.path.getmtime(self.checkpoint))
        except OSError:
            return 0


class ServedModels:
    """The served models by name, in the order given; the first is the default."""

    def __init__(self, llms: dict[Path, TinyLLM], settings: Settings):
        self.by_name = {}
        for path, llm in llms.items():
            runner = Runner(
                llm.model,
                settings.max_batch,
                llm.form,
                settings.native,
                kernels=settings.kernels,
                exact_rows=EXACT_ROWS,
            )
            engine = Engine(runner, settings.max_queue, settings.prefill_chunk, llm=llm)
            weights = checkpoint.content_sha256(path)
            served = ServedModel(model_name(path), path, llm, engine, runner.fingerprint(weights), weights)
            self.by_name[served.name] = served
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
            step = m.engine.runner.describe()
            m.engine.start()
            log.info(
                "serving %s from %s on %s, %d parameters; generating in %s weights (%s), %s step, %s",
                m.name,
                m.checkpoint,
                m.llm.device,
                m.llm.model.num_params(),
                step["weight_form"],
                m.llm.form_reason,
                step["step"],
                m.fingerprint,
            )
            if not step["batch_invariant"]:
                log.warning("%s: not batch-invariant: %s", m.name, step["why_not_batch_invariant"])

    def stop(self) -> None:
        for m in self:
            m.engine.stop()
