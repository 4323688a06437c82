#!/usr/bin/env bash
# The heads-only default (before the MIPIC adapter became the default; scripts/train_default_model.sh rebuilds
# the shipped assets now): exit heads on the untouched encoder, stored as src/mipic/training/assets/minilm_heads.*:
# export the packaged MiniLM without heads, fit them on the training split (seeded), calibrate int8/uint8 on
# the same texts, measure the budget table on the built-in suites, and store heads + measured quality +
# calibration as the assets `mipic bootstrap` attaches.
# About 4 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/default-heads}"
MIPIC="${MIPIC:-.venv/bin/mipic}"
rm -rf "$OUT"
"$MIPIC" bootstrap --out "$OUT/plain/1" --no-heads
"$MIPIC" heads fit "$OUT/plain/1" --out "$OUT/heads/1"
"$MIPIC" heads save-default "$OUT/heads/1"
