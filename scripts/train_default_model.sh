#!/usr/bin/env bash
# Reproduce the default model's committed MIPIC assets (src/mipic/training/assets/), from the untouched base:
#   1. exit heads fitted on the untouched packaged MiniLM (`mipic heads fit`, seed 0: KL + align, so they start
#      in the last layer's space);
#   2. the MIPIC recipe (configs/mipic_minilm.yaml: LoRA adapter + exit heads trained jointly), its heads
#      starting from (1) — never from the committed assets, so a rebuild does not depend on the last release;
#   3. export with the heads it trained, the budget table and int8 calibration (export does both);
#   4. adapter + heads + measurements stored as the assets `mipic bootstrap` (and so `make serve`) builds from.
# STEPS overrides the recipe's length (default: the config's train.max_steps, 6,000, with distill.anchor_weight 4.0).
# SEED: the run's seed (42: the committed assets, README "6,000 steps in one schedule"). ~3.5 h on 2 cores.
# Resumable: the base export and the fitted heads are kept, training resumes from its checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/default-model}"
MIPIC="${MIPIC:-.venv/bin/mipic}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The recipe's training sentences (and the built-in suites its measurements use) include WordNet, which comes from
# Debian's wordnet-base: without it a run silently trains on other sentences and measures five suites, not six.
[ -f /usr/share/wordnet/data.noun ] || { echo "needs Debian's wordnet-base (apt-get install wordnet-base, or scripts/ci_system_deps.sh)" >&2; exit 1; }
[ -f "$OUT/base/1/manifest.json" ] || "$MIPIC" bootstrap --out "$OUT/base/1" --no-heads
[ -f "$OUT/fitted/1/heads.npz" ] || "$MIPIC" heads fit "$OUT/base/1" --out "$OUT/fitted/1" --seed 0 --no-budgets
sets=(--set "train.output_dir=$OUT/train" --set train.resume=true --set "model.heads_init=$OUT/fitted/1" --set "seed=${SEED:-42}")
[ -n "${STEPS:-}" ] && sets+=(--set "train.max_steps=$STEPS")
"$MIPIC" train --config configs/mipic_minilm.yaml "${sets[@]}"
rm -rf "$OUT/model"
"$MIPIC" export "$OUT/train/final" "$OUT/model" --name all-minilm-l6-v2 --heads checkpoint
"$MIPIC" heads save-default "$OUT/model" --adapter "$OUT/train/final/adapter" --reproduce scripts/train_default_model.sh
