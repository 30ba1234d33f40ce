#!/usr/bin/env bash
# Everything a session lent a GPU should run, in one command: the device,
# the binaries' dynamic dependencies, the GPU test suite (tests/cuda, which
# skips without a GPU elsewhere), and the throughput benchmark.
#
# Here (with nvcc): scripts/gpu_bundle.sh packs build/emix and
# build/tests/test_cuda with the golden data, the tokenizer and a slice of
# real token shards into gpu_carry/ (git-ignored, under the device tool's
# 64 MiB). On the GPU machine, from the repository root, carrying gpu_carry:
#   scripts/gpu_check.sh [quick]     # quick: tests only
# The GPU image has the CUDA toolkit (cuBLAS/cuBLASLt) but keeps cuDNN in
# PyTorch's wheel: the loader is pointed there when ldd cannot find it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/emix_gpu_out}"
mkdir -p "$OUT"
if [[ -f gpu_carry/bin.tar.xz ]]; then
  mkdir -p build && tar -xJf gpu_carry/bin.tar.xz -C build
fi
export GOLDEN_DIR="${GOLDEN_DIR:-$PWD/gpu_carry/golden}"

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "nvidia-smi unavailable"
if ldd build/emix | grep -q "libcudnn.*not found"; then
  cudnn_lib=$(dirname "$(find / -name 'libcudnn.so.9' -not -path '/proc/*' 2>/dev/null | head -1)")
  export LD_LIBRARY_PATH="${cudnn_lib}:${LD_LIBRARY_PATH:-}"
  echo "cuDNN from ${cudnn_lib}"
fi
echo "== dynamic dependencies of build/emix"
ldd build/emix
if ldd build/emix | grep -q "not found"; then
  echo "build/emix needs libraries this machine lacks" >&2
  exit 1
fi

echo "== GPU tests"
timeout 300 build/tests/test_cuda --gtest_color=no 2>&1 | tee "$OUT/test_cuda.log"
tests_status=${PIPESTATUS[0]}
[[ "${1:-}" == quick ]] && exit "$tests_status"

echo "== throughput: GPT-2 124M, B=16, T=1024, bf16 (progress lines: tok/s, MFU)"
for attention in cudnn reference; do
  for optimizer in adamw ademamix; do
    echo "-- ${optimizer}, attention ${attention}"
    timeout 100 build/emix train --config configs/gpt2_124m_cuda.json \
      --set optimizer.name="${optimizer}" --set cuda.attention="${attention}" \
      --set data.train_shards='gpu_carry/data/bench_train_*.bin' --set data.val_shards='gpu_carry/data/bench_val_*.bin' \
      --set data.tokenizer_dir=gpu_carry/gpt2_tokenizer \
      --set training.steps=30 --set training.total_batch_tokens=65536 --set training.eval_interval=0 \
      --set logging.interval=5 --set logging.sample_tokens=0 --set checkpoint.interval=0 \
      --set logging.run_dir="/tmp/emix_bench/${optimizer}_${attention}" 2>&1 | tail -12 | tee -a "$OUT/bench.log"
  done
done
exit "$tests_status"
