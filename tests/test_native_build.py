"""Building the native step: a broken compiler never fails the install, a binary built from other sources is
never taken for the current one, and under TINYLLM_REQUIRE_NATIVE=1 (CI) the tests that need the step fail
instead of skipping when it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from model.native import sources
from model.native import step as native
from server.process import ROOT

CLEAR_LINE = "TinyLLM: installing without the native step (building it failed with /bin/false"


def source_copy(tmp_path: Path) -> Path:
    """What an install reads, copied (no build outputs, no compiled binary)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.so")
    for package in ("model", "server"):
        shutil.copytree(ROOT / package, src / package, ignore=skip)
    return src


def run(cmd: list, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )


def blocking_sitecustomize(folder: Path) -> Path:
    """A folder whose sitecustomize.py makes `model.native._step` unimportable, as if its build had failed."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['model.native._step'] = None\n")
    return folder


def test_a_broken_compiler_installs_the_package_without_the_step(tmp_path):
    """torch's BuildExtension runs the compiler before setuptools' `optional` could catch its failure: with a
    compiler that fails, pip still exits 0, says why in one line, and the package imports without the step."""
    src, target = source_copy(tmp_path), tmp_path / "target"
    pip = [sys.executable, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", "--no-index"]
    result = run([*pip, "--target", target, src], cwd=tmp_path, CXX="/bin/false", CC="/bin/false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    said = [line for line in (result.stdout + result.stderr).splitlines() if CLEAR_LINE in line]
    assert len(said) == 1, result.stdout[-3000:]
    assert (target / "model" / "native" / "step.py").is_file()
    assert not list((target / "model" / "native").glob("_step*")), "no binary was built"
    check = "from model.native import step; print(step.UNAVAILABLE)"
    imported = run([sys.executable, "-c", check], cwd=tmp_path, PYTHONPATH=str(target))
    assert imported.returncode == 0 and "the native step is not built" in imported.stdout, imported.stderr


def test_a_failed_in_place_rebuild_leaves_no_old_binary(tmp_path):
    """An editable install builds in place: when the rebuild fails, the previous binary is gone, not left to pose
    as the current one (the source hash would catch it too: test below)."""
    src = source_copy(tmp_path)
    old = src / "model" / "native" / f"_step{sysconfig.get_config_var('EXT_SUFFIX')}"
    old.write_bytes(b"an old build")
    result = run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, CXX="/bin/false", PYTHONPATH=src)
    assert result.returncode == 0, result.stderr[-3000:]
    assert CLEAR_LINE in result.stderr
    assert not old.exists()


@pytest.mark.native
def test_the_loaded_binary_is_built_from_the_sources_here():
    """setup.py compiles the sources' hash in; the binary that loads reports the hash of the sources on disk."""
    assert sources.source_hash() == native._step.SOURCE_HASH
    assert sources.source_arithmetic_version() == native._step.ARITHMETIC_VERSION
    assert native.STALE is None


def test_a_binary_from_other_sources_is_stale_and_unavailable(tmp_path):
    old_build = types.SimpleNamespace(SOURCE_HASH="0" * 64, ARITHMETIC_VERSION=0)
    reason = native.stale_reason(old_build)
    assert reason.startswith("the native step's binary is stale") and "000000000000" in reason
    assert "make setup" in reason
    before_the_hash = types.SimpleNamespace(ARITHMETIC_VERSION=1)  # a binary older than the hash
    assert "(unknown)" in native.stale_reason(before_the_hash)
    assert native.stale_reason(types.SimpleNamespace(SOURCE_HASH=sources.source_hash())) is None
    assert sources.source_hash(tmp_path) is None, "no sources (an installed wheel): nothing to compare"

    # As loaded: a stale module makes the step unavailable, with the reason the server reports.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys, types\n"
        "m = types.ModuleType('model.native._step')\n"
        "m.SOURCE_HASH, m.ARITHMETIC_VERSION = 'f' * 64, 1\n"
        "sys.modules['model.native._step'] = m\n"
    )
    check = "from model.native import step; print(step.STALE == step.UNAVAILABLE, step.UNAVAILABLE)"
    result = run([sys.executable, "-c", check], cwd=ROOT, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True the native step's binary is stale: built from sources ffffffffffff")


def test_without_the_step_ci_mode_fails_the_tests_that_need_it(tmp_path):
    """The native step hidden: its tests (and the runner's native case) skip by default, and fail under
    TINYLLM_REQUIRE_NATIVE=1, as .ci/run sets it."""
    site = blocking_sitecustomize(tmp_path / "site")
    tests = [
        "tests/test_native_step.py::test_every_kernel_path_computes_the_same_bits",
        "tests/test_runner.py::test_a_decode_step_takes_one_to_max_batch_sequences",
    ]
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests]
    path = f"{site}{os.pathsep}{ROOT}"
    relaxed = run(pytest_cmd, cwd=ROOT, PYTHONPATH=path, TINYLLM_REQUIRE_NATIVE="")
    assert relaxed.returncode == 0, relaxed.stdout[-3000:]
    assert "1 passed, 3 skipped" in relaxed.stdout  # the runner's torch case passes, the native cases skip
    strict = run(pytest_cmd, cwd=ROOT, PYTHONPATH=path, TINYLLM_REQUIRE_NATIVE="1")
    assert strict.returncode == 1, strict.stdout[-3000:]
    assert "1 passed, 3 errors" in strict.stdout  # failed in their setup: the mark, the fixture
    assert "TINYLLM_REQUIRE_NATIVE=1, but the native step is not built" in strict.stdout
