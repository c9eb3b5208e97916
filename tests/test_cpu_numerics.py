"""One system_fingerprint, the same bits on every CPU: the same requests (greedy and seeded draws with top-k,
top-p and penalties, logprobs and top logprobs) give bitwise the same tokens and log-probabilities whatever
torch dispatches its CPU kernels to (ATEN_CPU_CAPABILITY, as on an older, an AVX2-only or an AVX-512 host) and
whichever native kernel path runs (tests/cpu_numerics_worker.py, one subprocess per capability)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from model.native import step as native
from server.process import ROOT

pytestmark = pytest.mark.native  # fails instead of skipping under TINYLLM_REQUIRE_NATIVE=1 (conftest.py)

SHAKESPEARE = ROOT / "checkpoints" / "shakespeare"
CAPABILITIES = ["default", "avx2", "avx512"]  # torch's CPU dispatch, each a superset of the one before
# the most this CPU runs (torch's own choice here): a capability past it would run instructions the CPU lacks
_HERE = torch.backends.cpu.get_cpu_capability().lower()
HIGHEST = CAPABILITIES.index(_HERE) if _HERE in CAPABILITIES else 0


def run_worker(capability: str) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "cpu_numerics_worker.py"), str(SHAKESPEARE)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs() -> dict:
    return {}


@pytest.fixture(scope="module")
def reference(runs) -> dict:
    """The scalar kernels under torch's plainest dispatch: what every other combination must equal."""
    runs["default"] = run_worker("default")
    assert runs["default"]["capability"] == "DEFAULT"
    return runs["default"]["results"]


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_tokens_and_logprobs_are_bitwise_the_same_under_every_dispatch_and_kernel_path(reference, runs, capability):
    if CAPABILITIES.index(capability) > HIGHEST:
        pytest.skip(f"this CPU cannot run torch's {capability} kernels (the most it runs: {CAPABILITIES[HIGHEST]})")
    out = runs.get(capability) or run_worker(capability)
    assert out["capability"].lower() == capability
    paths = sorted(out["results"])
    print(f"ATEN_CPU_CAPABILITY={capability}: compared {', '.join(paths)} with default/scalar")
    assert len(paths) == len(native.FORMS) * len(native.kernels_here())
    for path in paths:
        form = path.split("/")[0]
        expected = reference[f"{form}/scalar"]
        for request, (ours, theirs) in enumerate(zip(out["results"][path], expected)):
            assert ours == theirs, f"{capability} {path}, request {request}: differs from default/scalar"
