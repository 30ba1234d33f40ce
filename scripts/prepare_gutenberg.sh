#!/usr/bin/env bash
# Tokenizes Project Gutenberg books from ../shared/data/gutenberg into
# data/gutenberg/ (license header and footer stripped, one document per book).
#
#   scripts/prepare_gutenberg.sh [PART...] [--val PART]
#
# PART is 0, 1, 2 or 3 (default: 0). The training shards
# (gutenberg_train_NNNNNN.bin) come from the PARTs given; with --val, the
# given part becomes the validation shards (gutenberg_val_NNNNNN.bin). Parts
# 0-2 are meant for training and part 3 for validation, e.g.
#
#   scripts/prepare_gutenberg.sh 0 1 2 --val 3
#
# The parts' books were assigned at random, so any part is a fair held-out
# set; ~120M tokens in all, ~30M per part. Archives are checked against
# SHA256SUMS before unpacking. SHARED_DIR (default <repo>/../shared), EMIX
# (default <repo>/build/emix) and TOKENIZER_DIR (default
# <repo>/data/gpt2_tokenizer) can be overridden.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
gutenberg=${SHARED_DIR:-$repo/../shared}/data/gutenberg
emix=${EMIX:-$repo/build/emix}
tokenizer_dir=${TOKENIZER_DIR:-$repo/data/gpt2_tokenizer}
out=$repo/data/gutenberg

train_parts=()
val_part=
while (($# > 0)); do
  case $1 in
    --val)
      [[ ${2:-} == [0-3] ]] || { echo "error: --val needs a part number (0-3)" >&2; exit 2; }
      val_part=$2
      shift 2
      ;;
    [0-3]) train_parts+=("$1"); shift ;;
    *) echo "usage: $0 [PART...] [--val PART]   (parts 0-3)" >&2; exit 2 ;;
  esac
done
((${#train_parts[@]} > 0)) || train_parts=(0)
if [[ -n $val_part && " ${train_parts[*]} " == *" $val_part "* ]]; then
  echo "error: part $val_part cannot be both a training and the validation part" >&2
  exit 2
fi
[[ -x $emix ]] || { echo "error: $emix not found: run scripts/build.sh first" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Unpacks part $1 into $work/part$1 after checking its hash.
unpack() {
  local archive=gutenberg-part$1.tar.xz
  (cd "$gutenberg" && grep " $archive\$" SHA256SUMS | sha256sum --check --quiet) ||
    { echo "error: $gutenberg/$archive does not match SHA256SUMS" >&2; exit 1; }
  mkdir -p "$work/part$1"
  tar -xJf "$gutenberg/$archive" -C "$work/part$1"
}

tokenize() {  # name inputs...
  local name=$1
  shift
  "$emix" tokenize --input "$@" --output-dir "$work/out" --name "$name" --gutenberg \
    --tokenizer-dir "$tokenizer_dir"
}

inputs=()
for part in "${train_parts[@]}"; do
  unpack "$part"
  inputs+=("$work/part$part")
done
tokenize gutenberg "${inputs[@]}"
if [[ -n $val_part ]]; then
  unpack "$val_part"
  # Everything of that part goes to validation: tokenize it under a scratch
  # name and keep its "train" shards as the val shards.
  tokenize held_out "$work/part$val_part"
  for shard in "$work"/out/held_out_train_*.bin; do
    mv "$shard" "$work/out/gutenberg_val_${shard##*_train_}"
  done
fi

mkdir -p "$out"
rm -f "$out"/gutenberg_train_*.bin "$out"/gutenberg_val_*.bin
mv "$work"/out/gutenberg_*.bin "$out/"
ls -l "$out"
