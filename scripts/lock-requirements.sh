#!/usr/bin/env bash
# Pin every Python package of the Docker image, with hashes: deploy/requirements/VARIANT.txt, which the
# Dockerfile installs with `pip install --require-hashes` (docker build --build-arg TORCH_VARIANT=VARIANT).
#
#   scripts/lock-requirements.sh              # cpu and cuda, the two lock files in the repository
#   scripts/lock-requirements.sh cu126        # another PyTorch wheel index (needs download.pytorch.org)
#
# Input: pyproject.toml's dependencies and build requirements, and torch at the Makefile's version.
# Variants: cpu     PyTorch's CPU-only wheel (+cpu): from this machine's local wheel if pip finds one
#                   without the network (as scripts/docker-smoke.sh does), else from PyTorch's CPU index
#           cuda    PyPI's torch, built for CUDA, with its nvidia-* libraries
#           cuXXX   PyTorch's wheel index for that CUDA version
# The image is linux/amd64 with Debian bookworm's Python 3.11; the locks are resolved for exactly that.
# Needs uv (`pip install uv`; UV=/path/to/uv to choose one) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
[[ -x $UV ]] || { echo "lock-requirements: no uv (pip install uv, or set UV=/path/to/uv)" >&2; exit 1; }
TORCH_VERSION=$(sed -n 's/^TORCH ?= torch==//p' Makefile)
[[ -n $TORCH_VERSION ]] || { echo "lock-requirements: no 'TORCH ?= torch==VERSION' in the Makefile" >&2; exit 1; }
BUILD_REQUIRES=$(python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT

lock() {
    local variant=$1 torch_source=()
    case $variant in
    cpu)
        if python3 -m pip download --no-index --no-deps -q -d "$WHEELS" --only-binary=:all: --python-version 3.11 \
                --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 "torch==$TORCH_VERSION" \
                >/dev/null 2>&1 && compgen -G "$WHEELS/torch-*+cpu-*.whl" >/dev/null; then
            torch_source=(--find-links "$WHEELS")
        else
            torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu)
        fi ;;
    cuda) ;;
    cu[0-9]*) torch_source=(--extra-index-url "https://download.pytorch.org/whl/$variant") ;;
    *) echo "lock-requirements: unknown variant '$variant' (cpu, cuda, cu126, ...)" >&2; exit 2 ;;
    esac
    mkdir -p deploy/requirements
    printf '%s\ntorch==%s\n' "$BUILD_REQUIRES" "$TORCH_VERSION" \
        | "$UV" pip compile --quiet --no-cache pyproject.toml - --generate-hashes \
            --python-version 3.11 --python-platform x86_64-manylinux_2_28 "${torch_source[@]}" \
            --custom-compile-command "scripts/lock-requirements.sh $variant" \
            --output-file "deploy/requirements/$variant.txt"
    echo "deploy/requirements/$variant.txt: $(grep -c '^[a-z]' "deploy/requirements/$variant.txt") packages," \
        "$(sed -n 's/^\(torch==[^ ]*\).*/\1/p' "deploy/requirements/$variant.txt")"
}

variants=("$@")
((${#variants[@]})) || variants=(cpu cuda)
for variant in "${variants[@]}"; do
    lock "$variant"
done
