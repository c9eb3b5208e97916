"""Builds the native forward step (model/native/step.cpp) as a PyTorch C++ extension at install time.

Everything else about the package is in pyproject.toml. Build against the torch that is installed
(`pip install --no-build-isolation ...`, as the Makefile and the Dockerfile do), so no other torch is pulled
into a build environment. Without torch or a C++ compiler the package installs without the extension, and
the server runs the torch decode step and says why (model/native/step.py).
"""

import sys

from setuptools import setup

ext_modules, cmdclass = [], {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("torch is not importable: building TinyLLM without its native step", file=sys.stderr)
else:
    ext_modules = [
        CppExtension(
            "model.native._step",
            ["model/native/step.cpp"],
            depends=["model/native/kernels.h"],
            # No -march: one binary for every x86-64 CPU; the AVX2 or VNNI kernels are chosen at run time.
            # -ffp-contract=off: no fused multiply-adds, so every kernel path rounds alike (see step.cpp).
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"],
            extra_link_args=["-fopenmp"],
            optional=True,  # a failed build leaves the package without it, not uninstallable
        )
    ]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=False)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
