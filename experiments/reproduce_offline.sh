#!/usr/bin/env bash
# The README's results table, end to end and offline: fine-tune the MiniLM-L6 teacher, distil it into a 3-layer
# student, train the same student on labels alone, then evaluate all three on SST-2 dev and test.
# Needs weights/minilm (see README) and ../shared/data/sst2. Extra arguments go to every training run as --set.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=()
for kv in "$@"; do extra+=(--set "$kv"); done
data=../shared/data/sst2

python experiments/finetune_teacher.py --config experiments/configs/finetune_minilm_sst2.yaml "${extra[@]}"
python experiments/distill_sst2.py --config experiments/configs/sst2_minilm_offline.yaml "${extra[@]}"
python experiments/distill_sst2.py --config experiments/configs/sst2_minilm_offline.yaml \
  --set alpha_kl=0 --set alpha_cos=0 --set output_dir=runs/minilm_student_ce --set job_name=label-only-control "${extra[@]}"

for run in minilm_teacher/best minilm_student_kd/best minilm_student_ce/best; do
  for split in dev test; do
    printf '%s %s ' "$run" "$split"
    python experiments/evaluate.py --model "runs/$run" --data-dir "$data" --split "$split"
  done
done
