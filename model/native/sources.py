"""Which sources the native step is built from, and their hash: setup.py compiles the hash into the extension
(its SOURCE_HASH), and model/native/step.py compares it with the sources on disk, so a binary built from other
sources (a failed rebuild that left the old one, a copied .so) is never taken for the current one.

Standard library only: setup.py loads this file by its path, before the package is installed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
# everything the extension is compiled from
SOURCES = ("step.cpp", "kernels.h", "fixed_math.h", "numerics.h", "sampling.h")


def source_hash(folder: Path = HERE) -> str | None:
    """sha256 over the sources' names and bytes, in SOURCES order; None when they are not all there (an
    installed wheel carries only the binary)."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = folder / name
        if not path.is_file():
            return None
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def source_arithmetic_version(folder: Path = HERE) -> int | None:
    """The ARITHMETIC_VERSION step.cpp on disk declares (None without the source)."""
    path = folder / "step.cpp"
    if not path.is_file():
        return None
    found = re.search(r"constexpr int ARITHMETIC_VERSION = (\d+);", path.read_text())
    return int(found.group(1)) if found else None
