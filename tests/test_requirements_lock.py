"""The Docker image's lock files (deploy/requirements/*.txt, made by scripts/lock-requirements.sh) pin
every package with hashes and still satisfy pyproject.toml: a dependency added or tightened there without
re-locking fails here, before a Docker build would. (That the lock installs is scripts/docker-smoke.sh's job.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCKS = sorted((REPO / "deploy" / "requirements").glob("*.txt"))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")
HASH = re.compile(r"^ {4}--hash=sha256:[0-9a-f]{64}( \\)?$")


def pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """{canonical name: (version, number of hashes)}; fails on a line that is neither a pin, a hash nor a comment."""
    out, name = {}, None
    for n, line in enumerate(lock.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := PIN.match(line):
            name = canonicalize_name(m[1])
            assert name not in out, f"{lock.name}:{n}: {name} pinned twice"
            out[name] = (Version(m[2]), 0)
        else:
            assert HASH.match(line) and name, f"{lock.name}:{n}: not a pin or a hash: {line!r}"
            out[name] = (out[name][0], out[name][1] + 1)
    return out


def test_both_images_are_locked():
    assert [p.name for p in LOCKS] == ["cpu.txt", "cuda.txt"]


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.stem)
def test_every_pin_has_hashes_and_satisfies_pyproject(lock):
    locked = pins(lock)
    assert all(hashes for _, hashes in locked.values()), "a pin without a hash: pip --require-hashes refuses it"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["build-system"]["requires"] + project["project"]["dependencies"]]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in locked, (
            f"{req.name} is in pyproject.toml but not in {lock.name}: re-run scripts/lock-requirements.sh"
        )
        version = locked[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {req.name}=={version}, pyproject.toml wants {req}: re-run scripts/lock-requirements.sh"
        )


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.stem)
def test_torch_is_the_makefiles(lock):
    makefile = (REPO / "Makefile").read_text()
    wanted = Version(re.search(r"^TORCH \?= torch==(\S+)$", makefile, re.M)[1])
    torch = pins(lock)["torch"][0]
    assert torch.public == wanted.public, f"{lock.name} pins torch {torch}, the Makefile installs {wanted}"
    # the CPU image takes PyTorch's CPU-only build; the CUDA one PyPI's (CUDA libraries as dependencies)
    assert torch.local == ("cpu" if lock.stem == "cpu" else None)
    assert (lock.stem == "cuda") == any(name.startswith("nvidia-") for name in pins(lock))
