"""Builds the native forward step (model/native/step.cpp) as a PyTorch C++ extension at install time.

Everything else about the package is in pyproject.toml. Build against the torch that is installed
(`pip install --no-build-isolation ...`, as the Makefile and the Dockerfile do), so no other torch is pulled
into a build environment. The install never fails because of the extension: without torch, or with a compiler
that is missing or broken, the package installs without it, setup.py says so in one line, and the server runs
the torch decode step and says why (model/native/step.py).
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def load_sources_module():
    """model/native/sources.py by its path: the package is not importable before it is installed."""
    spec = importlib.util.spec_from_file_location("tinyllm_native_sources", HERE / "model" / "native" / "sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def say_without_native(why: str) -> None:
    print(f"TinyLLM: installing without the native step ({why}); the torch step will serve", file=sys.stderr)


ext_modules, cmdclass = [], {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    say_without_native("torch is not importable")
else:

    class OptionalBuildExtension(BuildExtension.with_options(use_ninja=False)):
        """torch's BuildExtension, whose failures leave the package without the extension. torch checks the
        compiler (running it) before setuptools' `optional` handling could catch anything, so the whole build is
        wrapped. An in-place binary (an editable install) is removed first: a failed rebuild must not leave the
        previous one posing as current."""

        def run(self):
            if self.inplace:
                for ext in self.extensions:
                    Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            super().run()

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as e:  # the compiler check, the compile, the link: anything
                first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                say_without_native(f"building it failed with {os.environ.get('CXX', 'the C++ compiler')}: {first_line}")

    sources = load_sources_module()
    ext_modules = [
        CppExtension(
            "model.native._step",
            ["model/native/step.cpp"],
            depends=[f"model/native/{name}" for name in sources.SOURCES if name != "step.cpp"],
            # The hash of the sources it is built from: model/native/step.py compares it with the sources on disk.
            define_macros=[("TINYLLM_SOURCE_HASH", f'"{sources.source_hash()}"')],
            # No -march: one binary for every x86-64 CPU; the AVX2 or VNNI kernels are chosen at run time.
            # -ffp-contract=off: no fused multiply-adds, so every kernel path rounds alike (see step.cpp).
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"],
            extra_link_args=["-fopenmp"],
            optional=True,  # a failed build is not copied into the source tree by an editable install
        )
    ]
    cmdclass = {"build_ext": OptionalBuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
