#!/usr/bin/env bash
# Installs the Debian packages emix needs (only those missing), then GPT-2's
# tokenizer files from npm. Safe to run again: it does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  g++ cmake ninja-build pkg-config
  nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev libgtest-dev
  libopenblas-openmp-dev
  clang libclang-rt-dev libomp-dev  # scripts/fuzz (libFuzzer; clang's OpenMP)
  openmpi-bin libopenmpi-dev
  python3 python3-matplotlib
  xz-utils ca-certificates
)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} > 0)); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "all Debian packages present"
fi

scripts/fetch_tokenizer.sh
