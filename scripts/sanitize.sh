#!/usr/bin/env bash
# Builds the CPU code and the test suite with AddressSanitizer and
# UndefinedBehaviorSanitizer into build-asan/ and runs the whole suite there.
# Any sanitizer report fails the test that triggered it. Extra arguments go
# to ctest (e.g. -R Config). EMIX_SANITIZE overrides the sanitizer list.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${EMIX_SANITIZE_BUILD_DIR:-build-asan}
jobs=${EMIX_JOBS:-$(nproc)}
# Debug (assertions on) at -O1: compiles about twice as fast as -O2 with the
# sanitizers' instrumentation, and the tests still run in reasonable time.
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
  -DEMIX_SANITIZE="${EMIX_SANITIZE:-address,undefined}" -DEMIX_WITH_CUDA=OFF
cmake --build "$build_dir" -j "$jobs"

supp="$PWD/tests/sanitizer_suppressions"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:print_stacktrace=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
if [[ -f "$supp/lsan.supp" ]]; then
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
fi
# Instrumented code is several times slower than Release: longer timeouts.
# The mpirun tests (every ctest entry named distributed_mpi_*) are left out: Open MPI's own start-up allocations, made in
# the libmpi we dlopen, are never freed and LeakSanitizer reports them in
# every rank (frames in an unloaded module, which no suppression can name).
# They run uninstrumented in the main suite.
exec ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" --timeout 1800 -E '^distributed_mpi' "$@"
