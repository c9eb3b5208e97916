# TinyLLM server image: `docker build -t tinyllm .` then `docker run -p 8000:8000 tinyllm`.
#
# Stages: base (Debian's Python 3.11 + the service user) -> requirements (the dependency list out of
# pyproject.toml) -> builder (a venv: torch, then those dependencies, then our code, each its own
# cached layer) -> checkpoint (the bundled checkpoint, made world-readable) -> runtime (base + venv +
# checkpoint, non-root).
#
# Build arguments:
#   TORCH_VARIANT  cpu (default, PyTorch's CPU-only wheels, ~180 MB)
#                  cuda (PyPI's default Linux wheel, CUDA libraries included, for `docker run --gpus all`;
#                        torch 2.13.0's is built for CUDA 13.0: NVIDIA driver 580 or newer; image ~5.3 GB)
#                  cu126, cu128, ... (PyTorch's wheel index for that CUDA version, for older drivers)
#   TORCH_VERSION  2.13.0 (the version the Makefile installs)
# Secret (optional, BuildKit): `--secret id=extra_ca,src=FILE` adds PEM CA certificates for pip,
# for networks behind a TLS-inspecting proxy. Without it nothing changes.
# Torch wheels put in build/docker-wheels/ are installed instead of downloading one
# (scripts/docker-smoke.sh stages the machine's local CPU wheel there; normally it does not exist).

FROM debian:bookworm-slim AS base
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group tinyllm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH


# The runtime and build requirements, out of pyproject.toml.
FROM base AS requirements
COPY pyproject.toml /tmp/
RUN python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb")); \
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' > /requirements.txt


FROM base AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
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
ARG TORCH_VERSION=2.13.0
# Both globs let the build go on when build/ or build/docker-wheels/ does not exist (a glob that
# matches nothing copies nothing; a missing plain directory fails the build).
COPY buil[d]/docker-wheel[s] /tmp/wheels/
RUN --mount=type=cache,target=/root/.cache/pip \
    set -e; \
    if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
        pip install /tmp/wheels/torch-*.whl; \
    elif [ "$TORCH_VARIANT" = cuda ]; then \
        pip install "torch==$TORCH_VERSION"; \
    else \
        pip install --index-url "https://download.pytorch.org/whl/$TORCH_VARIANT" "torch==$TORCH_VERSION"; \
    fi; \
    rm -rf /tmp/wheels; \
    # C++ headers, test binaries and protoc (~190 MB) serve only C++ extension builds and torch's own tests.
    torch=$(python -c 'import importlib.util; print(importlib.util.find_spec("torch").submodule_search_locations[0])'); \
    rm -rf "$torch/include" "$torch/test" "$torch"/bin/test_* "$torch"/bin/*Test "$torch"/bin/protoc*

# Dependencies before code: editing model/ or server/ does not reinstall them, nor does editing
# pyproject.toml elsewhere than its dependency lists (the copied file is what the cache compares).
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip pip install -r /tmp/requirements.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY server ./server
RUN pip install --no-deps --no-build-isolation --no-cache-dir . && rm -rf build


# Checkpoints are written 0600 by the trainer; make the bundled one readable by the service user
# here, so the runtime stage holds a single copy of the weights.
FROM base AS checkpoint
COPY checkpoints/shakespeare /checkpoint
RUN chmod -R u=rwX,go=rX /checkpoint


FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
COPY --from=checkpoint /checkpoint /app/checkpoints/shakespeare
WORKDIR /app
USER tinyllm
# Same settings as outside Docker (server/config.py); mount another checkpoint folder and point
# TINYLLM_CHECKPOINT at it to serve that one instead.
ENV TINYLLM_HOST=0.0.0.0 \
    TINYLLM_PORT=8000 \
    TINYLLM_CHECKPOINT=/app/checkpoints/shakespeare
EXPOSE 8000
# /health answers 503 until the model is loaded; urlopen raises on it, so the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TINYLLM_PORT', '8000'), timeout=4)"
CMD ["tinyllm-serve"]
