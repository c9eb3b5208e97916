# TinyLLM server image: `docker build -t tinyllm .` then `docker run -p 8000:8000 tinyllm`.
#
# Stages: base (Debian's Python 3.11 + the service user) -> builder (a venv: the locked dependencies,
# then our code with its native step compiled against that torch, each its own cached layer) -> checkpoint
# (the bundled checkpoints, made world-readable) -> runtime (base + venv + checkpoints, non-root: no
# compiler, no headers; the compiled step is a shared library in the venv).
#
# Every Python package comes from a lock file with hashes, deploy/requirements/$TORCH_VARIANT.txt
# (made by scripts/lock-requirements.sh with uv), so two builds install the same files.
# Build arguments:
#   TORCH_VARIANT  cpu (default, PyTorch's CPU-only wheel, ~180 MB, from PyTorch's CPU index)
#                  cuda (PyPI's default Linux wheel, CUDA libraries included, for `docker run --gpus all`;
#                        torch 2.13.0's is built for CUDA 13.0: NVIDIA driver 580 or newer; image ~5.3 GB)
#                  cu126, cu128, ... (PyTorch's wheel index for that CUDA version, for older drivers;
#                        lock it first: scripts/lock-requirements.sh cu126)
# Secret (optional, BuildKit): `--secret id=extra_ca,src=FILE` adds PEM CA certificates for pip,
# for networks behind a TLS-inspecting proxy. Without it nothing changes.
# Torch wheels put in build/docker-wheels/ are offered to pip besides the index (the lock's hash still
# decides; scripts/docker-smoke.sh stages the machine's local CPU wheel there; normally it does not exist).

FROM debian:bookworm-slim AS base
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group tinyllm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH


FROM base AS builder
# g++ and Python's headers build the native step (setup.py); they stay in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv python3-dev g++ \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
# pip trusts its own CA bundle plus the extra CAs, if any were passed. /etc/pip.conf lives only in
# this stage: nothing of it reaches the runtime image.
RUN --mount=type=secret,id=extra_ca \
    if [ -s /run/secrets/extra_ca ]; then \
        cat "$(python -c 'import pip._vendor.certifi as c; print(c.where())')" /run/secrets/extra_ca > /etc/pip-ca.pem \
        && printf '[global]\ncert = /etc/pip-ca.pem\n' > /etc/pip.conf; \
    fi

ARG TORCH_VARIANT=cpu
# Both globs let the build go on when build/ or build/docker-wheels/ does not exist (a glob that
# matches nothing copies nothing; a missing plain directory fails the build).
COPY buil[d]/docker-wheel[s] /tmp/wheels/
COPY deploy/requirements /tmp/requirements
# Editing model/ or server/ does not reinstall the dependencies; only a changed lock file does.
RUN --mount=type=cache,target=/root/.cache/pip \
    set -e; \
    lock=/tmp/requirements/$TORCH_VARIANT.txt; \
    if [ ! -f "$lock" ]; then \
        echo "no lock file deploy/requirements/$TORCH_VARIANT.txt: make it with scripts/lock-requirements.sh $TORCH_VARIANT" >&2; \
        exit 1; \
    fi; \
    case "$TORCH_VARIANT" in \
        cuda) torch_index= ;; \
        *) torch_index="--extra-index-url https://download.pytorch.org/whl/$TORCH_VARIANT" ;; \
    esac; \
    if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then torch_index="--find-links /tmp/wheels"; fi; \
    pip install --require-hashes $torch_index -r "$lock"; \
    rm -rf /tmp/wheels /tmp/requirements

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY model ./model
COPY server ./server
# The native step is compiled here, against the torch just installed (no build isolation: no other torch is
# fetched), and must load: an image that would serve the slow torch step fails to build instead. Then torch's
# C++ headers, test binaries and protoc (~190 MB), which serve only such builds and torch's own tests, go.
RUN pip install --no-deps --no-build-isolation --no-cache-dir . \
    && rm -rf build \
    && cd / && python -c "from model.native import step; assert step.UNAVAILABLE is None, step.UNAVAILABLE" \
    && torch=$(python -c 'import importlib.util; print(importlib.util.find_spec("torch").submodule_search_locations[0])') \
    && rm -rf "$torch/include" "$torch/test" "$torch"/bin/test_* "$torch"/bin/*Test "$torch"/bin/protoc*


# The bundled checkpoints (checkpoints/shakespeare and checkpoints/multilingual, those of them that exist:
# .dockerignore lets only these in), made readable by the service user here, so the runtime stage holds a
# single copy of the weights.
FROM base AS checkpoint
COPY checkpoints /checkpoints
RUN chmod -R u=rwX,go=rX /checkpoints


FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
COPY --from=checkpoint /checkpoints /app/checkpoints
WORKDIR /app
USER tinyllm
# The settings of `make serve` (server/config.py), from /app: every bundled model in checkpoints/, shakespeare
# first (the native API's default model), each named after its folder. Mount other checkpoints (one, or a folder
# of them) and point TINYLLM_CHECKPOINT at them to serve those.
ENV TINYLLM_HOST=0.0.0.0 \
    TINYLLM_PORT=8000
EXPOSE 8000
# /health answers 503 until the model is loaded; urlopen raises on it, so the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TINYLLM_PORT', '8000'), timeout=4)"
CMD ["tinyllm-serve"]
