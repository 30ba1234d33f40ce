#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine into gpu_carry/
# (git-ignored): the built binaries (xz-compressed: the device tool carries at
# most 64 MiB), the golden data, the tokenizer and 6M + 0.3M tokens of the
# Gutenberg shards (scripts/prepare_gutenberg.sh must have run).
set -euo pipefail
cd "$(dirname "$0")/.."
ninja -C build emix test_cuda
mkdir -p gpu_carry/data
tar -cJf gpu_carry/bin.tar.xz -C build emix tests/test_cuda
rm -rf gpu_carry/golden gpu_carry/gpt2_tokenizer
cp -r "${GOLDEN_DIR:-../shared/golden}" gpu_carry/golden
cp -r data/gpt2_tokenizer gpu_carry/gpt2_tokenizer
python3 - <<'PY'
import os
import struct
def crop(src, dst, n):
    with open(src, 'rb') as f:
        header, tokens = f.read(1024), f.read(2 * n)
    words = list(struct.unpack('<256i', header))
    assert words[0] == 20240520, f'{src}: not a token shard'
    words[2] = len(tokens) // 2
    with open(dst, 'wb') as f:
        f.write(struct.pack('<256i', *words) + tokens)
crop("data/gutenberg/gutenberg_train_000000.bin", "gpu_carry/data/bench_train_000000.bin", int(os.environ.get("GPU_TRAIN_TOKENS", 6_000_000)))
crop('data/gutenberg/gutenberg_val_000000.bin', 'gpu_carry/data/bench_val_000000.bin', 300_000)
PY
du -sh gpu_carry
