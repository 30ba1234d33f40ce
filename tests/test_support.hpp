#pragma once
// Helpers shared by the test files: where the golden data is, temporary
// directories, and reading the golden binary files.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "distributed/shard_plan.hpp"
#include "model/gpt2_config.hpp"
#include "optim/optimizer.hpp"
#include "train/trainer.hpp"

namespace emix {
class Communicator;
}

namespace emix::test {

// $GOLDEN_DIR, or ../shared/golden beside the project root.
std::filesystem::path golden_dir();

// A fresh empty directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

template <typename T>
std::vector<T> read_binary(const std::filesystem::path& path);

std::filesystem::path source_dir();
// GPT-2's tokenizer files: $EMIX_TOKENIZER_DIR, else data/gpt2_tokenizer
// (scripts/fetch_tokenizer.sh puts them there).
std::filesystem::path tokenizer_dir();

// Every subfolder of golden_dir() named gpt2_*, sorted.
std::vector<std::filesystem::path> golden_model_dirs();

// A tiny training setup shared by the trainer tests: shards tiny_train_0/1
// (21 windows of 8 tokens over a 64-token vocabulary: with 4 windows per step
// an epoch lasts ~5 steps) and tiny_val_0 in `dir`, and a 13-step config of a
// 2-layer, 16-channel model whose run directory is dir/run.
inline constexpr int kTinyVocab = 64;
void write_tiny_shards(const std::filesystem::path& dir);
// `optimizer_overrides` are added to the optimizer section (m2_dtype, ...).
nlohmann::json tiny_run_config(const TempDir& dir, const std::string& optimizer, const std::string& run,
                               const nlohmann::json& optimizer_overrides = nlohmann::json::object());

// A command run by /bin/sh: its exit status (128 + N when killed by signal
// N) and its stdout and stderr together.
struct ShellResult {
  int exit_code = -1;
  std::string output;
};
ShellResult run_shell(const std::string& command);
// `text` quoted for a shell command line.
std::string shell_quote(const std::string& text);
// The emix executable under test with `arguments`, as a shell command line.
std::string emix_command(const std::string& arguments);

// Runs `script` with sh in a new user and mount namespace (`unshare -rm`),
// where it is root and may mount a tmpfs that no one else sees and that
// vanishes with it: a real small disk.
ShellResult run_in_private_mount_namespace(const std::string& script);
// Creates `mount_point` and says why a test cannot mount a private tmpfs on
// it on this machine (no user namespaces, no unshare), or "" when it can.
std::string why_no_private_tmpfs(const std::filesystem::path& mount_point);
// Runs `command` with the directory `disk` replaced by a private tmpfs of
// `kib` KiB, then copies `copied` (under `disk`) to `saved` before the tmpfs
// vanishes. The exit status is the command's.
ShellResult run_on_small_disk(const std::filesystem::path& disk, uint64_t kib, const std::string& command,
                              const std::filesystem::path& copied, const std::filesystem::path& saved);

// A run of `config` stopped after step `stop_at_step`, with the checkpoint a
// preemption leaves, then resumed from its latest checkpoint and run to the
// end (on `comm`'s ranks, or alone). Throws, failing the test, when either
// half does not end as it should or the checkpoint is not of that step.
struct ResumedRun {
  std::unique_ptr<Trainer> trainer;  // the second half, finished
  std::vector<StepRecord> history;   // the steps of both halves
};
ResumedRun run_stopped_and_resumed(const Config& config, int64_t stop_at_step, Communicator* comm = nullptr);

// What the every-optimizer tests cover: each registered optimizer with its
// defaults, and AdEMAMix's narrow m2 storages.
struct OptimizerVariant {
  std::string name;
  nlohmann::json overrides;  // optimizer hyperparameters beyond the defaults
  std::string label;         // name, or name_<dtype>: for traces and run directories
};
std::vector<OptimizerVariant> optimizer_variants();

// Whether a and b hold the same floats bit for bit (-0 ≠ +0, NaNs compared by bits).
bool same_bits(std::span<const float> a, std::span<const float> b);

// After a bf16 gradient reduction of `plan`'s padded buffer (bit patterns):
// this rank's chunk, padding excluded, holds `sums` (its chunk of the
// reduce-scatter), and every other element is as `before`.
void expect_only_own_chunk_summed(std::span<const uint16_t> after, std::span<const uint16_t> before,
                                  std::span<const uint16_t> sums, const ShardPlan& plan);

// `size` standard normal floats from `seed` (core/rng.hpp): test parameters
// and gradients.
std::vector<float> random_normal_vector(size_t size, uint64_t seed);
// A copy of the optimizer's state buffer `name` (a test failure if it has none).
std::vector<float> state_buffer(Optimizer& optimizer, const std::string& name);

// gtest's RUN_ALL_TESTS on every rank of a job (mpirun): rank 0 prints the
// usual report, the other ranks only their failures, prefixed "[rank r]".
// Returns 1 on every rank if any rank failed, else 0.
int run_all_tests_on_every_rank(Communicator& comm);

// The model of a golden meta.json, unpadded (padded_vocab_size ==
// vocab_size), as the golden tensors are laid out.
ModelConfig golden_model_config(const nlohmann::json& meta);

}  // namespace emix::test
