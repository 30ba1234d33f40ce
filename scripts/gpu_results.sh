#!/usr/bin/env bash
# The measurement behind docs/results.md, on a GPU machine: the paper's 110M
# model trained for 20M tokens of Project Gutenberg with AdamW, AdEMAMix,
# AdEMAMix (beta1 = 0) and Simplified-AdEMAMix (configs/results/), same data,
# same order. Carry gpu_carry/ (scripts/gpu_bundle.sh with GPU_TRAIN_TOKENS=20100000);
# each run's metrics.jsonl comes back as $OUT/<optimizer>.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/emix_results_out}"
mkdir -p "$OUT" build
[[ -f gpu_carry/bin.tar.xz ]] && tar -xJf gpu_carry/bin.tar.xz -C build
for name in adamw ademamix ademamix_beta1_0 simplified_ademamix; do
  timeout 150 build/emix train --config "configs/results/gpt2_110m_short_${name}.json" \
    --set data.train_shards='gpu_carry/data/bench_train_*.bin' --set data.val_shards='gpu_carry/data/bench_val_*.bin' \
    --set data.tokenizer_dir=gpu_carry/gpt2_tokenizer --set logging.run_dir="/tmp/results/${name}" \
    > "$OUT/${name}.log" 2>&1
  echo "${name}: exit $?"
  grep -E "validation loss|\| MFU" "$OUT/${name}.log" | tail -3
  cp "/tmp/results/${name}/metrics.jsonl" "$OUT/${name}.jsonl"
done
