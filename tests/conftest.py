"""Shared fixtures: a tiny random checkpoint on disk, a live server on it, an in-process app client, a headless
browser and a page of the live server (tests/browser.py), the `gpu` skip, the `native` mark (a test that needs the
native step: skipped without it, failed under TINYLLM_REQUIRE_NATIVE=1), and the report header naming the kernels
that ran."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from browser import CHROMIUM, CHROMIUM_ARGS, open_page, sync_playwright
from model import checkpoint
from model.native import step as native
from server.app import create_app
from server.config import Settings
from server.process import running_server
from support import cpu_model, require_native, sharp_model, tiny_model, wait_healthy

pytest.register_assert_rewrite("page_panels", "page_panels_across")  # the page tests' checks, in helper modules


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder (config.json, model.safetensors, training.json) of a tiny random model, seed 0."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    training = {"step": 0, "bytes_seen": 0, "val_loss": None, "note": "random weights for tests", "seed": 0}
    checkpoint.save(path, tiny_model(seed=0), training=training)
    return path


@pytest.fixture(scope="session")
def long_checkpoint(tmp_path_factory) -> Path:
    """The tiny model with a 2048-byte context, so that one request can ask for many tokens (the limit and shutdown
    tests, which hold or pace the engine so that it is still running)."""
    path = tmp_path_factory.mktemp("ckpt") / "long"
    checkpoint.save(path, tiny_model(seed=0, context_length=2048), training={"step": 0, "note": "tests"})
    return path


@pytest.fixture(scope="session")
def sharp(tmp_path_factory) -> Path:
    """A checkpoint of a tiny random model whose attention is far from uniform (2 layers x 2 heads, context 64),
    named "sharp": for the inspection tests, whose numbers are tested against an independent reference."""
    path = tmp_path_factory.mktemp("sharp") / "sharp"
    checkpoint.save(path, sharp_model(seed=7), training={"note": "random weights, sharp attention"})
    return path


@pytest.fixture(scope="module")
def sharp_server(sharp):
    with running_server(sharp) as s:
        yield s


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    """A live server on the tiny checkpoint, one per test module (modules that need other flags define their own)."""
    with running_server(tiny_checkpoint) as s:
        yield s


@pytest.fixture(scope="session")
def shipped_server():
    """The shipped configuration: `python -m server` with the default settings, as `make serve` and the Docker image
    start it (every bundled model, with its atlas), on a free port. One per session: the fuzz and page tests share
    it (nothing they do changes what it answers)."""
    with running_server(None) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless (page test modules skip without it: browser.NEEDS_BROWSER)."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """The live server's page in a fresh browser context; afterwards: no page errors, nothing loaded from outside."""
    page = open_page(browser, server.url)
    yield page
    assert not [e for e in page.errors if "Failed to load resource" not in e], page.errors
    outside = [u for u in page.requests if not (u.startswith(server.url) or u.startswith("data:"))]
    assert not outside, f"the page loaded something from outside this server: {outside}"
    page.context.close()


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


def pytest_runtest_setup(item):
    if item.get_closest_marker("native"):
        require_native()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config) -> list[str]:
    """Which kernels computed this run's numbers, so that a failure report names the machine kind: torch's
    float32 kernels round differently per CPU, matrix shape and BLAS; the native step's bits are the same on every
    x86-64 kernel path."""
    return kernel_lines()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """`pytest -q` (make test) prints no header: a failed run names its kernels at the end instead."""
    if config.option.verbose < 0 and (terminalreporter.stats.get("failed") or terminalreporter.stats.get("error")):
        terminalreporter.write_sep("-", "kernels")
        for line in kernel_lines():
            terminalreporter.write_line(line)


def kernel_lines() -> list[str]:
    """The native step's kernel path (or why it is unavailable); torch's CPU capability, BLAS/LAPACK, parallel
    backend and threads; the CPU's model name."""
    if native.UNAVAILABLE is None:
        paths = native.kernels_here()
        step = f"native step: {paths[0]} kernels (this CPU runs {', '.join(paths)})"
    else:
        step = f"native step: unavailable: {native.UNAVAILABLE}"
    built = torch.__config__.show()
    blas = " ".join(re.findall(r"(?:BLAS|LAPACK)_INFO=\w+", built)) or "no BLAS named"
    library = re.search(r"Intel\(R\) oneAPI Math Kernel Library Version [^\n]*|OpenBLAS[^\n]*", built)
    backend = re.search(r"ATen parallel backend: (\w+)", torch.__config__.parallel_info())
    return [
        step,
        f"torch {torch.__version__}: CPU capability {torch.backends.cpu.get_cpu_capability()}, {blas}"
        f"{f' ({library.group(0).strip()})' if library else ''}, {backend.group(1) if backend else '?'} "
        f"with {torch.get_num_threads()} threads",
        f"cpu: {cpu_model()}",
    ]
