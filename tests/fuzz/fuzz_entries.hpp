#pragma once
// The bodies of the fuzz targets, shared by the libFuzzer executables
// (tests/fuzz/fuzz_*.cpp, clang with -fsanitize=fuzzer) and by the ctest
// suite that replays tests/fuzz/regressions/ (tests/test_fuzz_regressions.cpp,
// built with the normal compiler).
//
// Each entry feeds the bytes to one parser. Rejecting the input with
// emix::Error is the expected outcome and is swallowed; anything else is a
// finding: another exception escapes (libFuzzer reports it as a crash via
// std::terminate, the regression test as a failure), a broken invariant calls
// fuzz_finding() which aborts, and sanitizers report memory errors.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace emix::fuzz {

// Inputs are named like the directories in tests/fuzz/corpus and regressions.
inline constexpr const char* kTargets[] = {"config", "shard", "checkpoint", "tokenizer"};

int fuzz_config(const uint8_t* data, size_t size);
int fuzz_shard(const uint8_t* data, size_t size);
int fuzz_checkpoint(const uint8_t* data, size_t size);
int fuzz_tokenizer(const uint8_t* data, size_t size);

// Runs the entry named `target` (one of kTargets) on the bytes.
int run_entry(std::string_view target, const uint8_t* data, size_t size);

// Where GPT-2's encoder.json and vocab.bpe are: $EMIX_TOKENIZER_DIR, else
// data/gpt2_tokenizer of the source tree. Empty when absent (the round-trip
// half of fuzz_tokenizer is then skipped).
std::filesystem::path tokenizer_dir();

// A private scratch directory for this process (temp files of the entries).
const std::filesystem::path& scratch_dir();

[[noreturn]] void fuzz_finding(const std::string& what);

}  // namespace emix::fuzz
