"""The README's "real output" blocks are what the code prints: scripts/readme_outputs.py --check runs every
`$ tinyllm ...` block against a server on the bundled Shakespeare model and compares."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.process import ROOT


def test_the_readmes_output_blocks_are_what_the_code_prints():
    shared = os.environ.get("TINYLLM_SHARED", str(ROOT.parent / "shared"))
    if not os.path.exists(os.path.join(shared, "data", "tinyshakespeare.txt")):
        pytest.skip(f"no {shared}/data/tinyshakespeare.txt (the ablate block reads it): set TINYLLM_SHARED")
    done = subprocess.run(
        [sys.executable, "scripts/readme_outputs.py", "--check"], cwd=ROOT, capture_output=True, timeout=280
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
