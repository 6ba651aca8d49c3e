#!/usr/bin/env bash
# Length-grouped vs random batches, same recipe, one pair of distillation runs per seed (README, Results).
# Distils the fine-tuned MiniLM teacher (runs/minilm_teacher/best, from reproduce_offline.sh) into the 3-layer
# student with group_by_length on and off, then evaluates each run's best/ checkpoint (chosen on dev) and its
# final student/ on SST-2 dev and test (seed<S>_<arm>/{,final_}accuracy_<split>.json), and prints
# summarize_batching.py's tables.
#   bash experiments/compare_batching.sh 1 2          # seeds; about 50 min per seed on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
  echo "usage: $0 SEED [SEED ...]" >&2
  exit 2
fi
data=../shared/data/sst2
config=experiments/configs/sst2_minilm_offline.yaml

for seed in "$@"; do
  for grouped in true false; do
    arm=$([ "$grouped" = true ] && echo grouped || echo random)
    out=runs/batching/seed${seed}_${arm}
    python experiments/distill_sst2.py --config "$config" \
      --set seed="$seed" group_by_length="$grouped" output_dir="$out" job_name="batching-seed${seed}-${arm}"
    # best/ is chosen by dev accuracy (biased on dev); student/ is the last step's model.
    for split in dev test; do
      printf 'seed %s %s best %s ' "$seed" "$arm" "$split"
      python experiments/evaluate.py --model "$out/best" --data-dir "$data" --split "$split" \
        | tee "$out/accuracy_${split}.json"
      printf 'seed %s %s final %s ' "$seed" "$arm" "$split"
      python experiments/evaluate.py --model "$out/student" --data-dir "$data" --split "$split" \
        | tee "$out/final_accuracy_${split}.json"
    done
  done
done
# Every seed found under runs/batching, this call's and earlier ones'.
python experiments/summarize_batching.py runs/batching
