"""The README's "real output" blocks, regenerated from the code: every ```text block whose first line is a
`$ ... tinyllm ...` command is run against a server on the bundled Shakespeare model, and its output written
under the command, as the code prints it today.

    python scripts/readme_outputs.py           # rewrite README.md's blocks
    python scripts/readme_outputs.py --check   # exit 1 and show the difference where a block is not what prints

Commands run in bash from the repository root with `tinyllm` = this checkout's `python -m server.cli`; `../shared/`
in a command is the shared/ folder beside the repository (or $TINYLLM_SHARED). tests/test_readme_outputs.py runs
--check.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.process import running_server  # noqa: E402

README = ROOT / "README.md"
CHECKPOINT = ROOT / "checkpoints" / "shakespeare"
# A rounding error the output reports (a check's max difference, attribution's residual error): its digits depend on
# the CPU kind's summation order (MKL on AVX-512 vs AVX2), so --check compares them as "some tiny number".
ROUNDING = re.compile(r"-?\d\.\de-(0[5-9]|[1-9]\d)")
BLOCK = re.compile(r"```text\n\$ (?P<command>[^\n]*\btinyllm [^\n]*)\n(?P<output>.*?)```", re.S)


def shared_folder() -> Path:
    return Path(os.environ.get("TINYLLM_SHARED", ROOT.parent / "shared"))


def run(command: str, url: str) -> str:
    """What the command prints, with `tinyllm` this checkout's command line."""
    script = f'tinyllm() {{ "{sys.executable}" -m server.cli "$@"; }}\n' + command.replace(
        "../shared/", f"{shared_folder()}/"
    )
    env = {**os.environ, "TINYLLM_URL": url, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    env.pop("TINYLLM_API_KEY", None)
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{command!r} failed ({done.returncode}): {done.stderr.decode()}")
    return done.stdout.decode("utf-8")


def regenerate(readme: str, url: str) -> str:
    return BLOCK.sub(lambda m: f"```text\n$ {m['command']}\n{run(m['command'], url)}```", readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a block differs")
    args = parser.parse_args()
    before = README.read_text(encoding="utf-8")
    with running_server(CHECKPOINT) as server:
        after = regenerate(before, server.url)
    if args.check:
        if ROUNDING.sub("‹rounding›", after) != ROUNDING.sub("‹rounding›", before):
            diff = difflib.unified_diff(before.splitlines(True), after.splitlines(True), "README.md", "as printed")
            sys.stdout.writelines(diff)
            sys.exit(1)
        print(f"README.md: {len(BLOCK.findall(before))} output blocks as the code prints them")
        return
    README.write_text(after, encoding="utf-8")
    print(f"README.md: {len(BLOCK.findall(before))} output blocks regenerated")


if __name__ == "__main__":
    main()
