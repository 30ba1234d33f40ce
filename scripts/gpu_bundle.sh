#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine into gpu_carry/
# (git-ignored): the built binaries (xz-compressed: the device tool carries at
# most 64 MiB), the golden data, the tokenizer and 6M + 0.3M tokens of the
# Gutenberg shards (scripts/prepare_gutenberg.sh must have run).
#
# Token shards take 2 bytes per token, so at most ~25M training tokens fit.
# For longer runs, GPU_TEXT_PARTS="0 1" carries those Gutenberg parts as their
# xz archives instead (29 MB each, ~30M tokens each; two fit, without the
# golden data) and scripts/gpu_results.sh tokenizes them on the device
# (such a bundle is for gpu_results.sh only: gpu_check.sh needs the default).
set -euo pipefail
cd "$(dirname "$0")/.."
ninja -C build emix test_cuda
mkdir -p gpu_carry/data
tar -cJf gpu_carry/bin.tar.xz -C build emix tests/test_cuda
rm -rf gpu_carry/golden gpu_carry/gpt2_tokenizer gpu_carry/shared gpu_carry/data/bench_train_*.bin
cp -r data/gpt2_tokenizer gpu_carry/gpt2_tokenizer
text_parts=${GPU_TEXT_PARTS:-}
if [[ -n $text_parts ]]; then
  gutenberg=${SHARED_DIR:-../shared}/data/gutenberg
  mkdir -p gpu_carry/shared/data/gutenberg
  cp "$gutenberg/SHA256SUMS" gpu_carry/shared/data/gutenberg/
  for part in $text_parts; do cp "$gutenberg/gutenberg-part$part.tar.xz" gpu_carry/shared/data/gutenberg/; done
else
  cp -r "${GOLDEN_DIR:-../shared/golden}" gpu_carry/golden
fi
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
if not os.environ.get("GPU_TEXT_PARTS"):
    crop("data/gutenberg/gutenberg_train_000000.bin", "gpu_carry/data/bench_train_000000.bin", int(os.environ.get("GPU_TRAIN_TOKENS", 6_000_000)))
crop('data/gutenberg/gutenberg_val_000000.bin', 'gpu_carry/data/bench_val_000000.bin', 300_000)
PY
# Open MPI from Debian's packages (6 MB), which the GPU image lacks:
# gpu_check.sh unpacks it there to run two ranks on the one GPU through MPI.
# The packages a one-node run loads; hwloc's plugins and the X11 libraries
# are left out.
rm -rf gpu_carry/openmpi
mkdir -p gpu_carry/openmpi
if ! (cd gpu_carry/openmpi && apt-get download -q openmpi-bin libopenmpi3 openmpi-common libevent-core-2.1-7 \
      libevent-pthreads-2.1-7 libfabric1 libhwloc15 libibverbs1 ibverbs-providers libmunge2 libnl-3-200 \
      libnl-route-3-200 libnuma1 libpciaccess0 libpmix2 libpsm-infinipath1 libpsm2-2 librdmacm1 libucx0 >/dev/null); then
  echo "warning: Open MPI's packages could not be downloaded: gpu_check.sh will skip the two-rank MPI test" >&2
  rm -rf gpu_carry/openmpi
fi
size_mib=$(( $(du -sb gpu_carry | cut -f1) / 1048576 ))
echo "gpu_carry: ${size_mib} MiB"
if (( size_mib >= 64 )); then
  echo "error: gpu_carry is ${size_mib} MiB; the device tool carries at most 64 MiB" >&2
  exit 1
fi
