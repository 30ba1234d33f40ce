#!/usr/bin/env bash
# Everything a session lent a GPU should run, in one command: the device,
# the binaries' dynamic dependencies, the GPU test suite (tests/cuda, which
# skips without a GPU elsewhere), and the throughput benchmark.
#
# Here (with nvcc): scripts/gpu_bundle.sh packs build/emix and
# build/tests/test_cuda with the golden data, the tokenizer and a slice of
# real token shards into gpu_carry/ (git-ignored, under the device tool's
# 64 MiB). On the GPU machine, from the repository root, carrying gpu_carry:
#   scripts/gpu_check.sh [quick|sanitize]   # quick: tests only; sanitize: tests under compute-sanitizer
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
# NCCL (loaded with dlopen by multi-GPU runs and the CudaDistributed tests):
# the image keeps it in a pip wheel (nvidia-nccl-cu13).
if [[ -z "${EMIX_LIBNCCL:-}" ]] && ! ldconfig -p 2>/dev/null | grep -q "libnccl.so.2"; then
  nccl_lib=$(find / -name 'libnccl.so.2' -not -path '/proc/*' 2>/dev/null | head -1)
  [[ -n "$nccl_lib" ]] && export EMIX_LIBNCCL="$nccl_lib" && echo "NCCL from ${nccl_lib}"
fi
echo "== dynamic dependencies of build/emix"
ldd build/emix
if ldd build/emix | grep -q "not found"; then
  echo "build/emix needs libraries this machine lacks" >&2
  exit 1
fi

echo "== GPU tests"
timeout 420 build/tests/test_cuda --gtest_color=no 2>&1 | tee "$OUT/test_cuda.log"
tests_status=${PIPESTATUS[0]}
# Two ranks sharing the GPU through MPI (the host-staged collectives; NCCL
# refuses two ranks on one GPU). The GPU image has no Open MPI of its own:
# the one gpu_bundle.sh carries is unpacked outside the system's folders.
mpirun_command=mpirun
if ! command -v mpirun >/dev/null 2>&1 && compgen -G "gpu_carry/openmpi/*.deb" >/dev/null; then
  ompi=/tmp/emix_openmpi
  rm -rf "$ompi" && mkdir -p "$ompi"
  for deb in gpu_carry/openmpi/*.deb; do dpkg -x "$deb" "$ompi"; done
  # The library Debian's alternatives would link.
  ln -sf "$ompi/usr/lib/libpsm1/libpsm_infinipath.so.1.16" "$ompi/usr/lib/x86_64-linux-gnu/libpsm_infinipath.so.1"
  export OPAL_PREFIX="$ompi/usr" OPAL_LIBDIR="$ompi/usr/lib/x86_64-linux-gnu/openmpi/lib" OPAL_SYSCONFDIR="$ompi/etc/openmpi"
  export LD_LIBRARY_PATH="$OPAL_LIBDIR:$ompi/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  # Shared memory between the two ranks; no network transports to probe.
  export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
  export OMPI_MCA_mtl='^ofi,psm,psm2' OMPI_MCA_osc='^ucx'
  mpirun_command="$ompi/usr/bin/orterun"
  echo "Open MPI unpacked from gpu_carry/openmpi into $ompi"
fi
if command -v "$mpirun_command" >/dev/null 2>&1; then
  echo "== two ranks on one GPU through MPI"
  EMIX_COMM=mpi timeout 300 "$mpirun_command" --oversubscribe --allow-run-as-root -np 2 build/tests/test_cuda \
    --gtest_color=no --gtest_filter='CudaDistributed.*' 2>&1 | tee "$OUT/test_cuda_mpi.log"
  (( PIPESTATUS[0] == 0 )) || tests_status=1
else
  echo "SKIPPED: two ranks on one GPU (CudaDistributed.RanksSharingOneGpuThroughMpi*): no mpirun, none carried"
fi
[[ "${1:-}" == quick ]] && exit "$tests_status"
if [[ "${1:-}" == sanitize ]]; then
  # memcheck over the GPU tests (left out, as they only repeat kernels the
  # others cover, many times slower: the 50-step curve test, the 124M-sized
  # cuDNN repeatability test, the trainer's fault scenarios, and NCCL's
  # runs, whose library kernels are not ours to check); racecheck over our
  # kernels and the optimizers (cuBLAS's and cuDNN's own kernels report
  # hazards racecheck cannot judge).
  echo "== compute-sanitizer memcheck"
  compute-sanitizer --tool memcheck --error-exitcode 3 build/tests/test_cuda \
    --gtest_filter='-CudaModel.FollowsTheCpuLossCurveFor50Steps:CudaAttention.CudnnDeterministicBackwardIsBitwiseReproducible:CudaReliability.*:CudaDistributed.Nccl*' \
    > "$OUT/memcheck.log" 2>&1
  memcheck_status=$?
  grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log"
  echo "== compute-sanitizer racecheck"
  compute-sanitizer --tool racecheck build/tests/test_cuda \
    --gtest_filter='CudaLayerNorm*:CudaEncoder*:CudaGlobalNorm*:*Classifier*:SumLosses*:MatmulBiasGrad*:CudaOptimizers*' \
    > "$OUT/racecheck.log" 2>&1
  grep -E "RACECHECK SUMMARY|PASSED|FAILED" "$OUT/racecheck.log"
  grep -E "Race reported" "$OUT/racecheck.log" | grep -vE "nvjet|cudnn" && exit 1
  exit "$memcheck_status"
fi

echo "== benchmarks (emix bench: median of 20 steps after 5 warm-ups, random tokens)"
bench() {  # config, then --set overrides
  local config=$1; shift
  echo "-- ${config} $*" | tee -a "$OUT/bench.log"
  local overrides=()
  for o in "$@"; do overrides+=(--set "$o"); done
  timeout 240 build/emix bench --config "configs/${config}.json" "${overrides[@]}" 2>&1 | tee -a "$OUT/bench.log"
}
bench gpt2_124m_cuda
bench gpt2_124m_cuda cuda.deterministic=false
bench gpt2_124m_cuda training.batch_size=32
bench gpt2_124m_cuda cuda.attention=reference
bench gpt2_124m_cuda optimizer.m2_dtype=bfloat16
bench gpt2_124m_cuda optimizer.m2_dtype=int8
bench gpt2_124m_cuda cuda.recompute=gelu+layernorm
bench gpt2_350m_cuda
bench gpt2_1.3b_cuda
bench gpt2_1.3b_cuda cuda.deterministic=false
bench gpt2_1.3b_cuda optimizer.m2_dtype=bfloat16
bench gpt2_1.3b_cuda optimizer.m2_dtype=int8

echo "== training: GPT-2 124M and 1.3B with AdEMAMix on real text (progress lines: tok/s, MFU)"
train() {  # config, steps
  timeout 150 build/emix train --config "configs/$1.json" \
    --set data.train_shards='gpu_carry/data/bench_train_*.bin' --set data.val_shards='gpu_carry/data/bench_val_*.bin' \
    --set data.tokenizer_dir=gpu_carry/gpt2_tokenizer \
    --set training.steps="$2" --set training.total_batch_tokens=131072 --set training.eval_interval=0 \
    --set logging.interval=5 --set logging.sample_tokens=32 --set checkpoint.interval=0 \
    --set logging.run_dir="/tmp/emix_train/$1" > "$OUT/train_$1.log" 2>&1
  grep -E "memory: total|device:|\| MFU|validation loss" "$OUT/train_$1.log" | tail -8
}
train gpt2_124m_cuda 40
train gpt2_350m_cuda 20
train gpt2_1.3b_cuda 10

if [[ -f scripts/torch_reference.py && -z "${EMIX_SKIP_TORCH:-}" ]]; then
  echo "== PyTorch: an independent float64 reference for a GPT-2 124M-shaped model, and torch.compile's throughput"
  timeout 120 python3 scripts/torch_reference.py selfcheck gpu_carry/golden/gpt2_tiny 2>&1 | tail -4 | tee -a "$OUT/torch.log"
  rm -rf /tmp/torch_golden
  timeout 200 python3 scripts/torch_reference.py golden /tmp/torch_golden --no_train 2>&1 | tail -3
  GOLDEN_DIR=/tmp/torch_golden timeout 120 build/tests/test_cuda --gtest_filter='CudaModel.MatchesTheGoldenData*' 2>&1 | \
    grep -E "OK|FAILED|Failure|Expected|NOTE|gradient of|loss" | tee -a "$OUT/torch.log"
  timeout 300 python3 scripts/torch_reference.py bench --B 16 --T 1024 2>&1 | tail -3 | tee -a "$OUT/torch.log"
fi
exit "$tests_status"
