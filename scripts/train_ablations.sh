#!/usr/bin/env bash
# The issue-12 comparison, on the same data, steps and seeds for every variant:
#   heads-only (the untouched encoder + fitted exit heads) vs MRL / 2D Matryoshka / distillation alone /
#   MIPIC without SIA / without PIC / full MIPIC / MIPIC + MIC (all as a LoRA adapter, heads trained jointly)
#   and full MIPIC as full fine-tuning.
# Each run: mipic train → mipic export (the run's own heads) → mipic eval --builtin → runs/ablations/<name>/.
# Then `python -m mipic.training.evaluation.ablations runs/ablations` writes the table (README).
# Usage: STEPS=150 SEEDS="42 43 44" VARIANTS="mipic heads_only" scripts/train_ablations.sh
# Resumable: a variant whose eval/compare.json exists is skipped; training resumes from its checkpoints.
# Every trained variant starts its exit heads from the same heads, fitted once on the untouched base (seed 0,
# $OUT/init): never from the committed default heads, which since the default became a MIPIC model are
# themselves a training result.
set -euo pipefail
cd "$(dirname "$0")/.."
MIPIC="${MIPIC:-.venv/bin/mipic}"
OUT="${OUT:-runs/ablations}"
STEPS="${STEPS:-150}"
SEEDS="${SEEDS:-42}"
ITEMS="${ITEMS:-300}"
VARIANTS="${VARIANTS:-heads_only mrl adaptive_layer distill mipic_no_sia mipic_no_pic mipic mipic_mic mipic_full_ft}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

overrides() {  # the only thing that differs between variants: one --set per line (a value may hold spaces)
  case "$1" in
    # another objective replaces the loss section (its own defaults: MiniLM's dims); distillation off
    mrl)            printf '%s\n' "loss={objective: mrl}" "distill.weight=0" ;;
    adaptive_layer) printf '%s\n' "loss={objective: adaptive_layer}" "distill.weight=0" ;;
    distill)        printf '%s\n' "loss={objective: distill}" ;;
    mipic_no_sia)   printf '%s\n' "loss.w_sia=0" ;;
    mipic_no_pic)   printf '%s\n' "loss.w_pic=0" ;;
    mipic)          ;;
    mipic_mic)      printf '%s\n' "loss.w_scr=0.1" "loss.w_sir=0.1" ;;
    mipic_full_ft)  printf '%s\n' "model.lora.enabled=false" "train.lr=5e-5" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

init="$OUT/init"
[ -f "$init/base/1/manifest.json" ] || "$MIPIC" bootstrap --out "$init/base/1" --no-heads
[ -f "$init/fitted/1/heads.npz" ] || "$MIPIC" heads fit "$init/base/1" --out "$init/fitted/1" --seed 0 --no-budgets

for seed in $SEEDS; do
  for v in $VARIANTS; do
    run="$OUT/${v}_s${seed}"
    [ -f "$run/eval/compare.json" ] && { echo "== $run: done"; continue; }
    echo "== $run ($(date +%H:%M:%S))"
    if [ "$v" = heads_only ]; then
      # the untouched encoder; heads fitted with this seed (sentence sample and batches)
      [ -f "$run/base/1/manifest.json" ] || "$MIPIC" bootstrap --out "$run/base/1" --no-heads
      "$MIPIC" heads fit "$run/base/1" --out "$run/model" --seed "$seed" --no-budgets
    else
      sets=(--set "seed=$seed" --set "train.max_steps=$STEPS" --set "train.output_dir=$run/train" --set train.resume=true
            --set "model.heads_init=$init/fitted/1")
      mapfile -t extra < <(overrides "$v")
      for o in "${extra[@]}"; do sets+=(--set "$o"); done
      "$MIPIC" train --config configs/mipic_minilm.yaml "${sets[@]}"
      "$MIPIC" export "$run/train/final" "$run/model" --name "$v" --heads checkpoint --budget-items 0
    fi
    "$MIPIC" eval "$run/model" --builtin --max-items "$ITEMS" --variants heads --out "$run/eval"
  done
done
