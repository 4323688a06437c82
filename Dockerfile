# syntax=docker/dockerfile:1
# mipic images, one Dockerfile, four stages worth building on their own:
#   docker build -t mipic:0.1.0 .                          CPU server (default target: runtime, no torch)
#   docker build --target gpu -t mipic-gpu:0.1.0 .         CUDA server (onnxruntime-gpu, MIPIC_PROVIDER=auto)
#   docker build --target trainer -t mipic-trainer:0.1.0 . torch + training extras for `mipic retrain`
# The `build` stage exports the default model with scripts/docker_build_steps.sh, the same script CI runs;
# the servers copy only the exported ONNX files out of it. Every image runs as uid/gid 10001, so the
# shared models volume is writable by the trainer and readable by the servers.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# CUDA 12 + cuDNN 9 runtime: what the onnxruntime-gpu pin below was built against (ORT >= 1.19 on PyPI,
# until its move to CUDA 13). To use CUDA 13, set both build args, e.g.
#   --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 --build-arg ORT_GPU_VERSION=1.31.1
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.22.0

# ---------------------------------------------------------------------------------------------------
# build: training extras (torch CPU), exports the packaged all-MiniLM-L6-v2 to /models.
FROM ${PYTHON_IMAGE} AS build
# PyPI's Linux torch wheel drags in CUDA libraries; the export only needs the CPU build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scripts ./scripts
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/pip \
    VENV=/opt/build-venv EXTRAS=train EDITABLE=0 MODELS_DIR=/models TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
    scripts/docker_build_steps.sh

# ---------------------------------------------------------------------------------------------------
# serve-venv: the torch-free serving install (onnxruntime, tokenizers, FastAPI), non-editable.
FROM ${PYTHON_IMAGE} AS serve-venv
ENV PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scripts ./scripts
COPY src ./src
RUN VENV=/opt/venv EXTRAS="" EDITABLE=0 scripts/install.sh \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---------------------------------------------------------------------------------------------------
# gpu-base / gpu-venv: the CUDA image has no Python 3.11; Ubuntu 24.04's python3 (3.12) is supported.
FROM ${CUDA_IMAGE} AS gpu-base
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mipic \
    && useradd --system --uid 10001 --gid mipic --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mipic

FROM gpu-base AS gpu-venv
ARG ORT_GPU_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY scripts ./scripts
COPY src ./src
# onnxruntime and onnxruntime-gpu both install the `onnxruntime` module, so the `gpu` extra cannot simply
# sit beside the CPU wheel: install the serving deps, then swap the CPU wheel for the pinned GPU wheel.
RUN VENV=/opt/venv EXTRAS="" EDITABLE=0 PYTHON=python3 scripts/install.sh \
    && /opt/venv/bin/python -m pip uninstall -y -q onnxruntime \
    && /opt/venv/bin/python -m pip install -q "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && /opt/venv/bin/python -c "import onnxruntime as o; p = o.get_available_providers(); \
assert 'CUDAExecutionProvider' in p, p"

# ---------------------------------------------------------------------------------------------------
# gpu: CUDA server. `docker run --gpus all ...`; MIPIC_PROVIDER=auto falls back to CPU without a GPU.
FROM gpu-base AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:${PATH} \
    MIPIC_PROVIDER=auto \
    MIPIC_BOOTSTRAP_DEFAULT=false \
    MIPIC_MAX_BATCH_TOKENS=65536 \
    MIPIC_DRAIN_TIMEOUT_S=30
COPY --from=gpu-venv /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /models /models
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/ready', timeout=2)"]
CMD ["mipic", "serve", "--host", "0.0.0.0", "--port", "8080", "--model", "/models/all-minilm-l6-v2"]

# ---------------------------------------------------------------------------------------------------
# trainer: torch + training extras for the one-off `mipic retrain` job. It writes new versions into the
# shared models volume (mounted at /models; /app/models points there so relative config paths work).
FROM build AS trainer
RUN groupadd --system --gid 10001 mipic \
    && useradd --system --uid 10001 --gid mipic --create-home --home-dir /home/mipic \
       --shell /usr/sbin/nologin mipic \
    && mkdir -p /app /data \
    && ln -s /models /app/models \
    && chown -R "10001:10001" /app /data /models
ENV PATH=/opt/build-venv/bin:${PATH} \
    HOME=/home/mipic \
    MIPIC_DATA_DIR=/data \
    TOKENIZERS_PARALLELISM=false
WORKDIR /app
COPY --chown=10001:10001 configs ./configs
USER 10001:10001
ENTRYPOINT ["mipic"]
CMD ["retrain", "--config", "configs/retrain_minilm.yaml"]

# ---------------------------------------------------------------------------------------------------
# runtime (default target): CPU server, no torch, non-root, one uvicorn worker. It serves the model
# repository /models/all-minilm-l6-v2 (baked in; a mounted volume replaces it) and follows its CURRENT pointer.
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:${PATH} \
    MIPIC_PROVIDER=cpu \
    MIPIC_BOOTSTRAP_DEFAULT=false \
    MIPIC_DRAIN_TIMEOUT_S=30
RUN groupadd --system --gid 10001 mipic \
    && useradd --system --uid 10001 --gid mipic --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mipic
COPY --from=serve-venv /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /models /models
USER 10001:10001
EXPOSE 8080
# /ready, not /health: a container counts as healthy once the model is loaded and warmed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/ready', timeout=2)"]
CMD ["mipic", "serve", "--host", "0.0.0.0", "--port", "8080", "--model", "/models/all-minilm-l6-v2"]
