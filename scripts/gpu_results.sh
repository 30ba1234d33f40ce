#!/usr/bin/env bash
# The measurement behind docs/results.md, on a GPU machine: the paper's 110M
# model trained for 20M tokens of Project Gutenberg with AdamW, AdEMAMix,
# AdEMAMix (beta1 = 0) and Simplified-AdEMAMix (configs/results/), same data,
# same order. Carry gpu_carry/ (scripts/gpu_bundle.sh with GPU_TRAIN_TOKENS=20100000);
# each run's metrics.jsonl comes back as $OUT/<run>.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/emix_results_out}"
mkdir -p "$OUT" build
[[ -f gpu_carry/bin.tar.xz ]] && tar -xJf gpu_carry/bin.tar.xz -C build
# run name, config name, then --set overrides; AdEMAMix once more with m2
# stored in bf16 and in int8 blocks (issue: memory-lean states).
run() {
  local name=$1 config=$2; shift 2
  local overrides=()
  for o in "$@"; do overrides+=(--set "$o"); done
  timeout 150 build/emix train --config "configs/results/gpt2_110m_short_${config}.json" \
    --set data.train_shards='gpu_carry/data/bench_train_*.bin' --set data.val_shards='gpu_carry/data/bench_val_*.bin' \
    --set data.tokenizer_dir=gpu_carry/gpt2_tokenizer --set logging.run_dir="/tmp/results/${name}" \
    "${overrides[@]}" > "$OUT/${name}.log" 2>&1
  echo "${name}: exit $?"
  grep -E "validation loss|\| MFU" "$OUT/${name}.log" | tail -3
  cp "/tmp/results/${name}/metrics.jsonl" "$OUT/${name}.jsonl"
}
# Each run takes up to 150 s: name the runs to do (default: the four
# optimizers; "m2" for the two m2 storages) to stay within one device
# command's 10 minutes.
for group in "${@:-optimizers}"; do
  case "$group" in
    optimizers) for name in adamw ademamix ademamix_beta1_0 simplified_ademamix; do run "$name" "$name"; done ;;
    m2)
      run ademamix_m2_bf16 ademamix optimizer.m2_dtype=bfloat16
      run ademamix_m2_int8 ademamix optimizer.m2_dtype=int8
      ;;
    *) echo "unknown group '$group' (optimizers or m2)" >&2; exit 2 ;;
  esac
done
