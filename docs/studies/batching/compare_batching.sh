#!/usr/bin/env bash
# Length-grouped vs random batches, same recipe, one pair of distillation runs per seed (README, Results).
# Distils the fine-tuned MiniLM teacher (runs/minilm_teacher/best, from reproduce_offline.sh) into the 3-layer
# student with group_by_length on and off, then evaluates each run's best/ checkpoint (chosen on dev) and its
# final student/ on SST-2 dev and test (seed<S>_<arm>/{,final_}accuracy_<split>.json), and prints
# summarize_batching.py's tables.
#   bash experiments/compare_batching.sh 1 2          # seeds; about 50 min per seed on 2 cores
# Environment, for runs of another setting:
#   ARMS    the arms to run (default "grouped random")
#   ROOT    the output folder (default runs/batching)
#   EXTRA   more config overrides for every run, e.g. "cosine_normalizer=train_mean_length"
# The grouped runs with the cosine loss normalised by the mean length, paired with runs/batching's random runs:
#   ARMS=grouped ROOT=runs/batching_cosnorm EXTRA=cosine_normalizer=train_mean_length \
#     bash experiments/compare_batching.sh 4 5 6
# Grouped runs that switch to random batches for the last 30% of the epoch:
#   ARMS=grouped ROOT=runs/tail30 EXTRA=group_fraction=0.7 bash experiments/compare_batching.sh 4 5 6 7 8
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
  echo "usage: [ARMS=...] [ROOT=...] [EXTRA=...] $0 SEED [SEED ...]" >&2
  exit 2
fi
data=../shared/data/sst2
config=experiments/configs/sst2_minilm_offline.yaml
root=${ROOT:-runs/batching}
read -r -a extra <<< "${EXTRA:-}"

for seed in "$@"; do
  for arm in ${ARMS:-grouped random}; do
    case "$arm" in
      grouped) grouped=true ;;
      random) grouped=false ;;
      *) echo "unknown arm '$arm'; expected grouped or random" >&2; exit 2 ;;
    esac
    out=$root/seed${seed}_${arm}
    python experiments/distill_sst2.py --config "$config" \
      --set seed="$seed" group_by_length="$grouped" output_dir="$out" job_name="batching-seed${seed}-${arm}" \
      "${extra[@]}"
    # best/ is chosen by dev accuracy (biased on dev); student/ is the last step's model.
    for split in dev test; do
      for kind in best final; do
        model=$([ "$kind" = best ] && echo best || echo student)
        prefix=$([ "$kind" = best ] && echo "" || echo final_)
        printf 'seed %s %s %s %s ' "$seed" "$arm" "$kind" "$split"
        python experiments/evaluate.py --model "$out/$model" --data-dir "$data" --split "$split" \
          | tee "$out/${prefix}accuracy_${split}.json"
      done
    done
  done
done
# Every seed found under the output folder, this call's and earlier ones'; grouped runs alone are paired with
# runs/batching's random runs.
if [ "${ARMS:-grouped random}" = grouped ]; then
  python experiments/summarize_batching.py runs/batching --grouped-root "$root"
else
  python experiments/summarize_batching.py "$root"
fi
