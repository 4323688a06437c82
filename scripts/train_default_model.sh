#!/usr/bin/env bash
# Reproduce the default model's committed MIPIC assets (src/mipic/training/assets/): train the MIPIC recipe
# (configs/mipic_minilm.yaml: LoRA adapter + exit heads trained jointly), export it with the heads it trained,
# measure the budget table and int8 calibration (export does both), and store adapter + heads + measurements as the assets
# `mipic bootstrap` (and so `make serve`) builds the default model from. STEPS overrides the recipe's length.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/default-model}"
MIPIC="${MIPIC:-.venv/bin/mipic}"
sets=(--set "train.output_dir=$OUT/train" --set train.resume=true)
[ -n "${STEPS:-}" ] && sets+=(--set "train.max_steps=$STEPS")
"$MIPIC" train --config configs/mipic_minilm.yaml "${sets[@]}"
rm -rf "$OUT/model"
"$MIPIC" export "$OUT/train/final" "$OUT/model" --name all-minilm-l6-v2 --heads checkpoint
"$MIPIC" heads save-default "$OUT/model" --adapter "$OUT/train/final/adapter" --reproduce scripts/train_default_model.sh
