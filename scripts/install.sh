#!/usr/bin/env bash
# One install recipe for developers, CI and the Docker build stage.
#   scripts/install.sh            -> venv with serving + training + dev + ray extras (default; ray: `mipic embed --ray`
#                                    and its test against a local Ray instance)
#   EXTRAS=train scripts/install.sh, EXTRAS= (empty) for the torch-free serving install
#   VENV=/opt/venv scripts/install.sh ; EDITABLE=0 for a regular (non-editable) install
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS-train,dev,ray}"
EDITABLE="${EDITABLE:-1}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip >/dev/null

stamp="$VENV/.mipic-install-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ -f "$stamp" ]; then
  echo "install.sh: $VENV is up to date"
  exit 0
fi

if [[ "$EXTRAS" == *train* ]]; then
  # torch first, pinned: a CPU build lies on disk for this exact version; anything else pulls CUDA wheels.
  "${PIP[@]}" install "torch==2.13.0"
fi
target="."
[ -n "$EXTRAS" ] && target=".[${EXTRAS}]"
if [ "$EDITABLE" = "1" ]; then
  "${PIP[@]}" install -c constraints.txt -e "$target"
else
  "${PIP[@]}" install -c constraints.txt "$target"
fi
rm -f "$VENV"/.mipic-install-*
touch "$stamp"
echo "install.sh: installed mipic[${EXTRAS}] into $VENV"
