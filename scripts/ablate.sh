#!/usr/bin/env bash
# The SMART ablation: plain fine-tuning, Rs only, Bregman only, full SMART — and, optionally,
# the other adversarial methods — over several seeds with everything else equal.
#
#   scripts/ablate.sh [CONFIG.yaml] [key=value ...]
#   SEEDS="1 2 3" METHODS="fgm pgd freelb" ABLATION_DIR=runs/ablation scripts/ablate.sh
#
# Each run goes to $ABLATION_DIR/<variant>/seed_<seed>/; `tensorboard --logdir $ABLATION_DIR`
# shows all of them side by side, and scripts/make_table.py $ABLATION_DIR makes the table.
# VARIANTS picks among the four SMART variants (default: all four); METHODS adds one variant per
# adversarial method (that method alone, Bregman off).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="$repo/scripts/configs/quickstart_smart.yaml"
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then config="$1"; shift; fi
seeds="${SEEDS:-1 2 3}"
variants="${VARIANTS:-plain rs_only bregman_only smart}"
methods="${METHODS:-}"
root="${ABLATION_DIR:-runs/ablation}"

overrides_for() {
  case "$1" in
    plain)        echo "adversarial.method=none bregman.mu=0" ;;
    rs_only)      echo "adversarial.method=smart bregman.mu=0" ;;
    bregman_only) echo "adversarial.method=none" ;;
    smart)        echo "adversarial.method=smart" ;;
    *)            echo "adversarial.method=$1 bregman.mu=0" ;;
  esac
}

for seed in $seeds; do
  for variant in $variants $methods; do
    out="$root/$variant/seed_$seed"
    if [ -f "$out/results.json" ]; then echo "skip $out (done)"; continue; fi
    echo "=== $variant seed $seed -> $out"
    # shellcheck disable=SC2046
    "$repo/scripts/train_mt.sh" "$config" "$@" $(overrides_for "$variant") \
      "train.seed=$seed" "output_dir=$out" "train.resume=auto"
  done
done
python3 "$repo/scripts/make_table.py" "$root"
