#!/usr/bin/env bash
# The measurement behind docs/results.md, on a GPU machine: the paper's 110M
# model (configs/results/) trained with AdamW, AdEMAMix, AdEMAMix (beta1 = 0)
# and Simplified-AdEMAMix, and AdEMAMix again with its m2 stored in bf16 and
# in int8 blocks, on the same data in the same order.
#
#   scripts/gpu_results.sh [RUN...]
#
# RUN is adamw, ademamix, ademamix_beta1_0, simplified_ademamix, m2_bf16 or
# m2_int8 (default: the first four). Name few enough runs for one device
# command's 10 minutes (each run prints its time).
#
# Data, from what scripts/gpu_bundle.sh carried in gpu_carry/:
#   - the default bundle (GPU_TRAIN_TOKENS=20100000): 20M tokens of shards,
#     the configs' 305 steps of 65,536 tokens;
#   - GPU_TEXT_PARTS="0 1": Gutenberg parts as text, tokenized here once
#     (into data/gutenberg/, kept between commands while the machine stays
#     warm), and every run is stretched to the tokens there are, less than
#     one epoch: training.steps and the optimizer's warmups that span the
#     whole run (t_alpha, t_beta3, t_beta1) become 99 % of the tokens over
#     65,536, rounded down.
# Each run's metrics.jsonl comes back as $OUT/<run>.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/emix_results_out}"
mkdir -p "$OUT" build
[[ -f gpu_carry/bin.tar.xz ]] && tar -xJf gpu_carry/bin.tar.xz -C build

train_shards='gpu_carry/data/bench_train_*.bin'
stretch_runs=
if [[ -d gpu_carry/shared/data/gutenberg ]]; then
  stretch_runs=1
  if ! compgen -G 'data/gutenberg/gutenberg_train_*.bin' > /dev/null; then
    parts=$(ls gpu_carry/shared/data/gutenberg/ | sed -n 's/^gutenberg-part\([0-3]\)\.tar\.xz$/\1/p' | tr '\n' ' ')
    echo "tokenizing Gutenberg part(s) ${parts}"
    # shellcheck disable=SC2086  # one argument per part
    SHARED_DIR=gpu_carry/shared EMIX=build/emix TOKENIZER_DIR=gpu_carry/gpt2_tokenizer \
      scripts/prepare_gutenberg.sh $parts || exit 1
  fi
  train_shards='data/gutenberg/gutenberg_train_*.bin'
fi

# The --set overrides that stretch config $1 to the training tokens there
# are (none for the default bundle, which the configs were written for).
stretch() {
  [[ -n $stretch_runs ]] || return 0
  # shellcheck disable=SC2086  # the glob expands to the shards
  python3 - "$1" $train_shards <<'PY'
import json, struct, sys
config = json.load(open(sys.argv[1]))
tokens = sum(struct.unpack('<3i', open(path, 'rb').read(12))[2] for path in sys.argv[2:])
t = config["training"]
# 1 % short of the tokens: windows do not span shard ends, so a shard's
# last partial window is lost; the run must stay within one epoch.
steps = int(tokens * 0.99) // t["total_batch_tokens"]
overrides = [f"training.steps={steps}"]
for key in ("t_alpha", "t_beta3", "t_beta1"):
    if config["optimizer"].get(key) == t["steps"]:
        overrides.append(f"optimizer.{key}={steps}")
print(" ".join(overrides))
PY
}

run() {  # run name, config name, then --set overrides
  local name=$1 config="configs/results/gpt2_110m_short_$2.json"; shift 2
  local overrides=()
  for o in $(stretch "$config") "$@"; do overrides+=(--set "$o"); done
  local start=$SECONDS
  timeout 580 build/emix train --config "$config" \
    --set data.train_shards="$train_shards" --set data.val_shards='gpu_carry/data/bench_val_*.bin' \
    --set data.tokenizer_dir=gpu_carry/gpt2_tokenizer --set logging.run_dir="/tmp/results/${name}" \
    "${overrides[@]}" > "$OUT/${name}.log" 2>&1
  echo "${name}: exit $? after $((SECONDS - start)) s (${overrides[*]})"
  grep -E "validation loss|\| MFU" "$OUT/${name}.log" | tail -3
  cp "/tmp/results/${name}/metrics.jsonl" "$OUT/${name}.jsonl"
}

for name in "${@:-adamw ademamix ademamix_beta1_0 simplified_ademamix}"; do
  for run_name in $name; do
    case "$run_name" in
      adamw | ademamix | ademamix_beta1_0 | simplified_ademamix) run "$run_name" "$run_name" ;;
      m2_bf16) run ademamix_m2_bf16 ademamix optimizer.m2_dtype=bfloat16 ;;
      m2_int8) run ademamix_m2_int8 ademamix optimizer.m2_dtype=int8 ;;
      *) echo "unknown run '$run_name'" >&2; exit 2 ;;
    esac
  done
done
